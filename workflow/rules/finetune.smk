# One rule for every method's full runs (wildcards {method}, {seed}; flyp/runs.py), used as it is
# for few-shot draws ({shots}, {draw}) and a sweep's grid runs ({point}, {seed}); zero-shot and the
# linear probe go through it too, with no training, so every method ends in the same checkpoint
# format.


rule features:
    input:
        pretrained=PRETRAINED,
        tables=TABLES,
    output:
        FEATURES,
    params:
        code=step_code("features"),
        options=FEATURES_ARGS,
    threads: job_threads("infer", gpus=1)
    resources:
        **GPU,
        **job_size("infer"),
        device=JOB_DEVICE,
        workers=WORKERS,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/features{PER_PRETRAINED}.log",
    shell:
        "flyp features --checkpoint {input.pretrained} --data {input.tables} --out {output} "
        "--threads {threads} --device {resources.device:q} --workers {resources.workers:q}"
        "{params.options} 2> {log}"


rule finetune:
    input:
        unpack(method_inputs),
        unpack(sweep_selection),
        unpack(train_copy),  # the resized train images, when the preset has them
        pretrained=pretrained_model,
        tables=TABLES,
        captions=rules.captions.output.captions,
        templates=rules.captions.output.templates,
        cache=EVAL_CACHE,  # ID-val, transformed once
    output:
        model=f"{MODELS}/{runs.FULL}/best.safetensors",
        log_csv=f"{MODELS}/{runs.FULL}/train_log.csv",
    params:
        benchmark=BENCHMARK_ARG,
        captions=lambda wildcards, input: os.path.dirname(input.captions),
        config=lambda wildcards: json.dumps(finetune_config(Run.of(wildcards)), sort_keys=True),
        args=finetune_args,
        speed=lambda wildcards: SPEED_ARGS if method_info(wildcards.method).trains else "",
        launch=lambda wildcards: TRAIN_LAUNCH if method_info(wildcards.method).trains else "flyp",
        bench=BENCH_SPEC,
        code=method_code,
        train_data=train_copy_args,
        step="finetune",
        evaluate="",  # finetune_fewshot: its test-set evaluation, in the same process
    threads: finetune_threads
    resources:
        **FINETUNE_GPU,  # runtime.gpus_per_job for a method that trains, else 1
        **job_size(finetune_kind),
        device=JOB_DEVICE,
        workers=WORKERS,
        checkpoint_minutes=CHECKPOINT_MINUTES,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/finetune_{{method}}_seed{{seed}}.log",
    shell:
        "{params.launch} {params.step:q} --benchmark {params.benchmark:q} --data {input.tables}"
        "{params.train_data} "
        "--captions {params.captions:q} --pretrained {input.pretrained} "
        "--method {wildcards.method:q} {params.args} {params.speed} "
        "--eval-cache {input.cache} --out {output.model} --log-csv {output.log_csv} "
        "--threads {threads} --checkpoint-minutes {resources.checkpoint_minutes:q} "
        "--device {resources.device:q} --workers {resources.workers:q}{params.evaluate} 2> {log}"


# A few-shot draw: the same training, then its evaluation on the test sets in the same process
# (`flyp fewshot`: a preset runs hundreds of draws, SST2 3 k x 50 draws x 3 methods, and each
# process pays seconds of start-up). Its checkpoint is intermediate (temp), deleted once the job
# has scored it; its log, metrics and provenance stay. A change to test-time evaluation reruns the
# draws' training too (their checkpoints are gone). DVC's report stage runs the draws.
use rule finetune as finetune_fewshot with:
    output:
        model=temp(f"{MODELS}/{runs.DRAW}/best.safetensors"),
        log_csv=f"{MODELS}/{runs.DRAW}/train_log.csv",
        metrics=f"{RESULTS}/{runs.DRAW}/metrics.json",
        provenance=f"{RESULTS}/{runs.DRAW}/provenance.json",
    log:
        f"logs/{BENCHMARK}/finetune_{{method}}_k{{shots}}_draw{{draw}}.log",
    params:
        code=fewshot_code,
        step="fewshot",
        evaluate=lambda wildcards, output: (
            f" --metrics-out {shlex.quote(output.metrics)} "
            f"--provenance-out {shlex.quote(output.provenance)} "
            f"--eval-precision {shlex.quote(EVAL_PRECISION)}"
        ),


# The sweep (common.smk: SWEEP): each grid point of a swept method, trained once with the first seed
# and never evaluated on a test set; sweep_select reads the checkpoints' ID-val scores and picks
# one, then the full runs, whose settings depend on it, are added to the DAG (a checkpoint). The
# first seed's full run at the picked point is the picked grid run (the same command but for its
# paths), so it is copied, not trained again.
if SWEEP:

    use rule finetune as finetune_sweep with:
        output:
            model=f"{MODELS}/{runs.GRID}/best.safetensors",
            log_csv=f"{MODELS}/{runs.GRID}/train_log.csv",
        wildcard_constraints:
            method="|".join(SWEEP),
        log:
            f"logs/{BENCHMARK}/finetune_{{method}}_sweep_{{point}}_seed{{seed}}.log",

    checkpoint sweep_select:
        input:
            lambda wildcards: [
                f"{MODELS}/{runs.grid_run(wildcards.method, point, SWEEP_SEED)}/best.safetensors"
                for point in SWEEP_POINTS[wildcards.method]
            ],
        output:
            f"{RESULTS}/{{method}}/sweep.json",
        wildcard_constraints:
            method="|".join(SWEEP),
        params:
            grid=lambda wildcards: json.dumps(SWEEP[wildcards.method]),
            code=step_code("sweep_select"),
        threads: job_threads("light")
        resources:
            **job_size("light"),
        conda:
            ENV
        log:
            f"logs/{BENCHMARK}/sweep_select_{{method}}.log",
        shell:
            "flyp sweep-select --method {wildcards.method:q} --grid {params.grid:q} "
            "--out {output} {input:q} 2> {log}"

    rule reuse_sweep_run:
        input:
            unpack(picked_grid_run),
        output:
            model=f"{MODELS}/{runs.FULL}/best.safetensors",
            log_csv=f"{MODELS}/{runs.FULL}/train_log.csv",
        wildcard_constraints:
            method="|".join(SWEEP),
            seed=str(SWEEP_SEED),
        localrule: True
        params:
            # the picked run's folder, as input: named only once sweep_select has run
            picked=lambda wildcards: os.path.dirname(picked_grid_run(wildcards)["model"]),
        threads: job_threads("light")
        resources:
            **job_size("light"),
        conda:
            ENV
        log:
            f"logs/{BENCHMARK}/reuse_sweep_{{method}}_seed{{seed}}.log",
        shell:
            "(cp {params.picked:q}/best.safetensors {output.model:q} && "
            "cp {params.picked:q}/train_log.csv {output.log_csv:q}) 2> {log}"

    ruleorder: reuse_sweep_run > finetune
