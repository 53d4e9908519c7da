# One rule for every method and run (wildcards {method}, {run}); zero-shot and the linear probe go
# through it too, with no training, so every method ends in the same checkpoint format.


rule features:
    input:
        pretrained=f"{MODELS}/pretrained.safetensors",
        tables=TABLES,
    output:
        f"{MODELS}/features.safetensors",
    params:
        code=step_code("features"),
    threads: job_threads("infer", gpus=1)
    resources:
        **GPU,
        **job_size("infer"),
        device=JOB_DEVICE,
        workers=WORKERS,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/features.log",
    shell:
        "flyp features --checkpoint {input.pretrained} --data {input.tables} --out {output} "
        "--threads {threads} --device {resources.device:q} --workers {resources.workers:q} 2> {log}"


rule finetune:
    input:
        unpack(method_inputs),
        pretrained=f"{MODELS}/pretrained.safetensors",
        tables=TABLES,
        captions=rules.captions.output.captions,
        templates=rules.captions.output.templates,
        cache=EVAL_CACHE,  # ID-val, transformed once
    output:
        model=f"{MODELS}/{{method}}/{{run}}/best.safetensors",
        log_csv=f"{MODELS}/{{method}}/{{run}}/train_log.csv",
    wildcard_constraints:
        run=r"seed\d+",
    params:
        benchmark=BENCHMARK,
        captions=lambda wildcards, input: os.path.dirname(input.captions),
        config=lambda wildcards: json.dumps(
            finetune_config(wildcards.method, wildcards.run), sort_keys=True
        ),
        args=finetune_args,
        speed=lambda wildcards: SPEED_ARGS if method_info(wildcards.method).trains else "",
        launch=lambda wildcards: TRAIN_LAUNCH if method_info(wildcards.method).trains else "flyp",
        bench=BENCH_SPEC,
        code=method_code,
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
        f"logs/{BENCHMARK}/finetune_{{method}}_{{run}}.log",
    shell:
        "{params.launch} finetune --benchmark {params.benchmark:q} --data {input.tables} "
        "--captions {params.captions:q} --pretrained {input.pretrained} "
        "--method {wildcards.method:q} {params.args} {params.speed} "
        "--eval-cache {input.cache} --out {output.model} --log-csv {output.log_csv} "
        "--threads {threads} --checkpoint-minutes {resources.checkpoint_minutes:q} "
        "--device {resources.device:q} --workers {resources.workers:q} 2> {log}"


# A few-shot draw: the same job, but its checkpoint is intermediate (temp): deleted once
# evaluated, since a preset runs hundreds of draws (SST2: 3 k x 50 draws x 3 methods of ViT-B/16);
# its log, metrics and provenance stay. DVC's report stage runs the draws.
use rule finetune as finetune_fewshot with:
    output:
        model=temp(f"{MODELS}/{{method}}/{{run}}/best.safetensors"),
        log_csv=f"{MODELS}/{{method}}/{{run}}/train_log.csv",
    wildcard_constraints:
        run=r"k\d+-draw\d+",
