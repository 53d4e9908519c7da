# A full run's checkpoint on the ID test set and every OOD set, and weight-ensembled (WiSE-FT)
# with the zero-shot checkpoint of the same run over the alpha grid (the preset's, or the
# top-level alphas when set: flyp.workflow.config.resolve), in the same job (one model load and
# one process start fewer per checkpoint). Images are read from the evaluation cache
# (data.smk: eval_cache), not decoded again. A few-shot draw is scored by its own job
# (finetune.smk: finetune_fewshot).


rule evaluate_ensemble:
    input:
        unpack(zeroshot_inputs),
        model=f"{MODELS}/{runs.FULL}/best.safetensors",
        tables=TABLES,
        cache=EVAL_CACHE,
    output:
        metrics=f"{RESULTS}/{runs.FULL}/metrics.json",
        provenance=f"{RESULTS}/{runs.FULL}/provenance.json",
        curve=f"{RESULTS}/{runs.FULL}/wise_curve.csv",
        wise=f"{RESULTS}/{runs.FULL}/wise_metrics.json",
    params:
        benchmark=BENCHMARK_ARG,
        bench=BENCH_SPEC,
        code=step_code("evaluate", *EVAL_CODE),
        precision=EVAL_PRECISION,
        alphas=",".join(str(a) for a in RUN["alphas"]),
        zeroshot_scores=lambda wildcards, input: (
            f"--zeroshot-metrics {shlex.quote(input.zeroshot_metrics)}"
            if "zeroshot_metrics" in input.keys()
            else ""
        ),
    threads: job_threads("infer", gpus=1)
    resources:
        **GPU,
        **job_size("infer"),
        device=JOB_DEVICE,
        workers=WORKERS,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/evaluate_{{method}}_seed{{seed}}.log",
    shell:
        "flyp evaluate --benchmark {params.benchmark:q} --data {input.tables} "
        "--checkpoint {input.model} --eval-cache {input.cache} --metrics-out {output.metrics} "
        "--provenance-out {output.provenance} --ensemble-with {input.zeroshot} "
        "{params.zeroshot_scores} --precision {params.precision:q} "
        "--alphas {params.alphas:q} --curve-out {output.curve} --wise-out {output.wise} "
        "--threads {threads} --device {resources.device:q} --workers {resources.workers:q} "
        "2> {log}"


# The other seeds of a method that does not depend on its seed (common.smk: SEEDLESS) reuse the
# first seed's results: copied, so that the table reads a run per seed as for every method.
RESULT_FILES = ["metrics.json", "provenance.json", "wise_curve.csv", "wise_metrics.json"]
if SEEDLESS and len(SEEDS) > 1:

    rule reuse_seedless:
        input:
            expand(f"{RESULTS}/{{{{method}}}}/seed{SEEDS[0]}/{{file}}", file=RESULT_FILES),
        output:
            expand(f"{RESULTS}/{{{{method}}}}/seed{{{{seed}}}}/{{file}}", file=RESULT_FILES),
        wildcard_constraints:
            method="|".join(SEEDLESS),
            seed="|".join(str(s) for s in SEEDS[1:]),
        localrule: True
        threads: job_threads("light")
        resources:
            **job_size("light"),
        params:
            folder=lambda wildcards, output: os.path.dirname(output[0]),
        conda:
            ENV
        log:
            f"logs/{BENCHMARK}/reuse_{{method}}_seed{{seed}}.log",
        shell:
            "cp {input:q} {params.folder:q}/ 2> {log}"

    ruleorder: reuse_seedless > evaluate_ensemble
