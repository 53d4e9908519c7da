# One rule for every method (wildcard {method}); zero-shot goes through it too, with no training,
# so every method ends in the same checkpoint format.


rule finetune:
    input:
        pretrained=f"{MODELS}/pretrained.safetensors",
        tables=TABLES,
        captions=rules.captions.output.captions,
        templates=rules.captions.output.templates,
    output:
        model=f"{MODELS}/{{method}}/best.safetensors",
        log_csv=f"{MODELS}/{{method}}/train_log.csv",
    params:
        benchmark=BENCHMARK,
        captions=lambda wildcards, input: os.path.dirname(input.captions),
        config=lambda wildcards: json.dumps(finetune_config(wildcards.method), sort_keys=True),
        train=lambda wildcards: train_args(finetune_config(wildcards.method)),
        options=lambda wildcards: " ".join(
            f"-o {shlex.quote(f'{k}={v}')}"
            for k, v in finetune_config(wildcards.method)["options"].items()
        ),
    threads: workflow.cores
    resources:
        device=DEVICE,
        workers=WORKERS,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/finetune_{{method}}.log",
    shell:
        "flyp finetune --benchmark {params.benchmark} --data {input.tables} "
        "--captions {params.captions} --pretrained {input.pretrained} "
        "--method {wildcards.method} {params.train} {params.options} "
        "--out {output.model} --log-csv {output.log_csv} --threads {threads} "
        "--device {resources.device} --workers {resources.workers} 2> {log}"
