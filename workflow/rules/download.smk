# The raw archives of the selected benchmark (BENCH.downloads): fetched into data/raw/downloads/
# and unpacked into data/raw/<name>/, which prepare_data indexes. presets.<benchmark>.data.<name>
# may name a local archive, an already extracted folder or a mirror URL instead of the official
# URL; archives that cannot be downloaded (ImageNet, ObjectNet) must be set there, else their job
# stops with a message saying where to get them. Raw data is not versioned by DVC (hundreds of GB):
# DVC versions the prepared tables, which index it.
import re

from flyp.datasets.download import archive_filename, local_source

RAW = "data/raw"
DOWNLOADS = {d.name: d for d in BENCH.downloads}
# What params.yaml says about each archive: None (official URL), a local path or a URL.
SOURCES = {name: RUN["data"].get(name) for name in DOWNLOADS}
# The archive each extract job reads: a local file or folder named in params, else the fetched one.
LOCAL = {name: local_source(source) for name, source in SOURCES.items()}
ARCHIVES = {
    name: str(LOCAL[name])
    if LOCAL[name]
    else f"{RAW}/downloads/{archive_filename(d, SOURCES[name])}"
    for name, d in DOWNLOADS.items()
}
FETCHED = {os.path.basename(ARCHIVES[n]): n for n in DOWNLOADS if LOCAL[n] is None}


rule download:
    output:
        archive=f"{RAW}/downloads/{{archive}}",
    wildcard_constraints:
        archive="|".join(map(re.escape, FETCHED)) or "(?!)",  # (?!): matches nothing
    params:
        benchmark=BENCHMARK,
        name=lambda wildcards: FETCHED[wildcards.archive],
        source=lambda wildcards: (
            f"--source {shlex.quote(SOURCES[FETCHED[wildcards.archive]])}"
            if SOURCES[FETCHED[wildcards.archive]]
            else ""
        ),
    conda:
        ENV
    log:
        "logs/raw/download_{archive}.log",
    shell:
        "flyp download --benchmark {params.benchmark} --name {params.name} "
        "{params.source} --archive {output.archive} 2> {log}"


rule extract:
    input:
        archive=lambda wildcards: ARCHIVES[wildcards.name],
    output:
        folder=directory(f"{RAW}/{{name}}"),
    wildcard_constraints:
        name="|".join(map(re.escape, DOWNLOADS)) or "(?!)",
    params:
        benchmark=BENCHMARK,
    conda:
        ENV
    log:
        "logs/raw/extract_{name}.log",
    shell:
        "flyp download --benchmark {params.benchmark} --name {wildcards.name} "
        "--source {input.archive:q} --extract {output.folder} 2> {log}"
