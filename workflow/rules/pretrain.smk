# The zero-shot-capable CLIP every method starts from: pretrained here contrastively (the embedded
# benchmark) or exported from released open_clip weights (model.pretrained set). Downstream rules
# cannot tell which.

if TRAINED_HERE:
    PRETRAIN_CMD = (
        "{params.launch} pretrain --benchmark {params.benchmark:q} --data {input.tables} "
        "--model {params.model:q} {params.train} {params.speed} --out {output.model} "
        "--log-csv {output.log_csv} --threads {threads} --device {resources.device:q} "
        "--workers {resources.workers:q} "
        "--checkpoint-minutes {resources.checkpoint_minutes:q} 2> {log}"
    )
else:
    PRETRAIN_CMD = (
        "flyp pretrained --model {params.model:q} --pretrained {params.pretrained:q} "
        "--out {output.model} --log-csv {output.log_csv} 2> {log}"
    )


rule pretrain:
    input:
        tables=TABLES if TRAINED_HERE else [],
    output:
        model=PRETRAINED,
        log_csv=f"{MODELS}/pretrain_log{PER_PRETRAINED}.csv",
    params:
        benchmark=BENCHMARK_ARG,
        model=RUN["model"]["name"],
        pretrained=RUN["model"]["pretrained"] or "",
        train=lambda wildcards: (
            train_args({**RUN["pretrain"], "seed": wildcards.get("pseed", PRETRAIN_SEEDS[0])})
            if TRAINED_HERE
            else ""
        ),
        launch=TRAIN_LAUNCH,
        speed=SPEED_ARGS if TRAINED_HERE else "",
        classnames=BENCH.classnames,  # for the zero-shot score it logs
        code=step_code("pretrain" if TRAINED_HERE else "pretrained"),
    threads: job_threads("pretrain", gpus=GPUS_PER_JOB if TRAINED_HERE else 0)
    resources:
        **(TRAIN_GPU if TRAINED_HERE else {}),  # exporting released weights needs no GPU
        **job_size("pretrain"),
        device=JOB_DEVICE if TRAINED_HERE else "cpu",
        workers=WORKERS,
        checkpoint_minutes=CHECKPOINT_MINUTES,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/pretrain{PER_PRETRAINED}.log",
    shell:
        PRETRAIN_CMD
