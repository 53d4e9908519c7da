# The benchmark's tables (generated or downloaded) and the FLYP caption tables.


rule prepare_data:
    input:
        raw=[f"data/raw/{d.name}" for d in BENCH.downloads],  # unpacked by download.smk
    output:
        tables=directory(TABLES),
    params:
        benchmark=BENCHMARK,
        code=step_code("prepare", BENCH.prepare),
        # data options, less the archive sources (those are for the download rules)
        options=" ".join(
            f"-o {shlex.quote(f'{k}={v}')}"
            for k, v in sorted(RUN["data"].items())
            if k not in {d.name for d in BENCH.downloads}
        ),
    threads: workflow.cores
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/prepare_data.log",
    shell:
        "flyp prepare --benchmark {params.benchmark:q} --out {output.tables} {params.options} "
        "--workers {threads} 2> {log}"


rule captions:
    input:
        tables=TABLES,
    output:
        captions=f"{CAPTIONS}/captions.parquet",
        templates=f"{CAPTIONS}/templates.parquet",
    params:
        benchmark=BENCHMARK,
        classnames=BENCH.classnames,
        templates=BENCH.templates,
        code=step_code("captions"),
        out=lambda wildcards, output: os.path.dirname(output.captions),
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/captions.log",
    shell:
        "flyp captions --benchmark {params.benchmark:q} --data {input.tables} "
        "--out {params.out:q} 2> {log}"
