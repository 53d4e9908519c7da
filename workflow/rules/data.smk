# The benchmark's tables (generated or downloaded), the FLYP caption tables, and the evaluation
# cache (ID-val and every eval set, transformed once for all evaluations).


rule prepare_data:
    input:
        raw=[f"data/raw/{d.name}" for d in BENCH.downloads],  # unpacked by download.smk
    output:
        tables=directory(TABLES),
    params:
        benchmark=BENCHMARK_ARG,
        code=step_code("prepare", BENCH.prepare),
        **SOURCE_FINGERPRINT,
        # data options, less the archive sources (those are for the download rules)
        options=" ".join(
            f"-o {shlex.quote(f'{k}={v}')}"
            for k, v in sorted(prepare_options(RUN, BENCH).items())
        ),
    threads: job_threads("prepare")
    resources:
        **job_size("prepare"),
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
        benchmark=BENCHMARK_ARG,
        classnames=BENCH.classnames,
        templates=BENCH.templates,
        code=step_code("captions"),
        out=lambda wildcards, output: os.path.dirname(output.captions),
    threads: job_threads("light")
    resources:
        **job_size("light"),
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/captions.log",
    shell:
        "flyp captions --benchmark {params.benchmark:q} --data {input.tables} "
        "--out {params.out:q} 2> {log}"


# The eval transform is deterministic and every checkpoint of the benchmark carries the pretrained
# checkpoint's preprocessing, so ID-val and the eval sets are decoded and transformed once here
# (uint8 arrays that evaluation memory-maps) instead of once per evaluation job and alpha.
rule eval_cache:
    input:
        pretrained=PRETRAINED.format(pseed=PRETRAIN_SEEDS[0]),  # its preprocessing
        tables=TABLES,
    output:
        cache=directory(EVAL_CACHE),
    params:
        benchmark=BENCHMARK_ARG,
        sets=["val", *(s.name for s in BENCH.eval_sets)],  # not the templates: no model runs
        code=step_code("evalcache"),
    threads: job_threads("infer")
    resources:
        **job_size("infer"),
        workers=WORKERS,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/eval_cache.log",
    shell:
        "flyp evalcache --benchmark {params.benchmark:q} --checkpoint {input.pretrained} "
        "--data {input.tables} --out {output.cache} --threads {threads} "
        "--workers {resources.workers:q} 2> {log}"


# The resized train images (common.smk: TRAIN_RESIZE), when the preset asks for them.
if TRAIN_RESIZE:

    rule resize_train:
        input:
            tables=TABLES,
        output:
            resized=directory(TRAIN_COPY),
        params:
            side=TRAIN_RESIZE,
            code=step_code("resize"),
        threads: job_threads("prepare")
        resources:
            **job_size("prepare"),
        conda:
            ENV
        log:
            f"logs/{BENCHMARK}/resize_train.log",
        shell:
            "flyp resize --data {input.tables} --out {output.resized} --side {params.side:q} "
            "--workers {threads} 2> {log}"
