# Each checkpoint on the ID test set and every OOD set.


rule evaluate:
    input:
        model=f"{MODELS}/{{method}}/best.safetensors",
        tables=TABLES,
    output:
        metrics=f"{RESULTS}/{{method}}/metrics.json",
        provenance=f"{RESULTS}/{{method}}/provenance.json",
    params:
        benchmark=BENCHMARK,
    threads: workflow.cores
    resources:
        device=DEVICE,
        workers=WORKERS,
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/evaluate_{{method}}.log",
    shell:
        "flyp evaluate --benchmark {params.benchmark} --data {input.tables} --checkpoint {input.model} "
        "--metrics-out {output.metrics} --provenance-out {output.provenance} "
        "--threads {threads} --device {resources.device} --workers {resources.workers} 2> {log}"
