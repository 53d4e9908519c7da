# The raw archives of the selected benchmark (BENCH.downloads): fetched into data/raw/downloads/
# and unpacked into data/raw/<name>/, which prepare_data indexes. presets.<benchmark>.data.<name>
# may name a local archive or an already extracted folder (read in place) or a mirror URL
# (https:// or file://, fetched) instead of the official URL, or be a mapping {source, size, md5,
# sha256} whose stated sums replace the real archive's (a fixture: `flyp fixture`). Archives that
# cannot be downloaded (ImageNet, ObjectNet) must be set there, else their job stops with a
# message saying where to get them. Raw data is not versioned by DVC (hundreds of GB): DVC versions
# the prepared tables, which index it.
import re

from flyp.datasets.download import archive_filename, read_in_place, resolve_source, source_key

RAW = "data/raw"
DOWNLOADS = {d.name: d for d in BENCH.downloads}
# What params.yaml says about each archive: where it comes from (None: the official URL) and, for
# the mapping form, the sums it states, which both jobs check instead of the pinned ones.
try:
    SOURCES, STATED = {}, {}
    for _name, _d in DOWNLOADS.items():
        _value = RUN["data"].get(_name)
        SOURCES[_name] = resolve_source(_d, _value, source_key(BENCH, _d))[0]
        STATED[_name] = {k: _value[k] for k in ("size", "md5", "sha256") if k in _value} \
            if isinstance(_value, dict) else {}
except UserError as e:
    sys.exit(f"error: params.yaml: {e}")
# The archive each extract job reads: a local file or folder named in params, else the fetched one.
LOCAL = {name: read_in_place(source) for name, source in SOURCES.items()}
ARCHIVES = {
    name: str(LOCAL[name])
    if LOCAL[name]
    else f"{RAW}/downloads/{archive_filename(d, SOURCES[name])}"
    for name, d in DOWNLOADS.items()
}
FETCHED = {os.path.basename(ARCHIVES[n]): n for n in DOWNLOADS if LOCAL[n] is None}
# `flyp download` options for the sums a mapping source states ("": the pinned ones).
STATED_SUMS = {
    name: " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in sorted(sums.items()))
    for name, sums in STATED.items()
}


rule download:
    output:
        archive=f"{RAW}/downloads/{{archive}}",
    wildcard_constraints:
        archive="|".join(map(re.escape, FETCHED)) or "(?!)",  # (?!): matches nothing
    params:
        benchmark=BENCHMARK_ARG,
        name=lambda wildcards: FETCHED[wildcards.archive],
        source=lambda wildcards: (
            f"--source {shlex.quote(SOURCES[FETCHED[wildcards.archive]])}"
            if SOURCES[FETCHED[wildcards.archive]]
            else ""
        ),
        sums=lambda wildcards: STATED_SUMS[FETCHED[wildcards.archive]],
    # Run by the Snakemake process itself under a cluster profile: a cluster's login node reaches
    # the internet, its compute nodes often do not. Extracting is a cluster job.
    localrule: True
    threads: job_threads("fetch")
    resources:
        **job_size("fetch"),
    conda:
        ENV
    log:
        "logs/raw/download_{archive}.log",
    shell:
        "flyp download --benchmark {params.benchmark:q} --name {params.name:q} "
        "{params.source} {params.sums} --archive {output.archive} 2> {log}"


rule extract:
    input:
        archive=lambda wildcards: ARCHIVES[wildcards.name],
    output:
        folder=directory(f"{RAW}/{{name}}"),
    wildcard_constraints:
        name="|".join(map(re.escape, DOWNLOADS)) or "(?!)",
    params:
        benchmark=BENCHMARK_ARG,
        sums=lambda wildcards: STATED_SUMS[wildcards.name],
    threads: job_threads("fetch")
    resources:
        **job_size("fetch"),
    conda:
        ENV
    log:
        "logs/raw/extract_{name}.log",
    shell:
        "flyp download --benchmark {params.benchmark:q} --name {wildcards.name:q} "
        "--source {input.archive:q} {params.sums} --extract {output.folder} 2> {log}"
