# The results table (one row per method, with provenance) and the DVC metrics file.


rule report:
    input:
        metrics=expand(f"{RESULTS}/{{method}}/metrics.json", method=RUN["methods"]),
        provenance=expand(f"{RESULTS}/{{method}}/provenance.json", method=RUN["methods"]),
    output:
        table="results/table.csv",
        metrics="results/metrics.json",
    params:
        benchmark=BENCHMARK,
        results=lambda wildcards, input: os.path.dirname(os.path.dirname(input.metrics[0])),
        methods=" ".join(f"--method {m}" for m in RUN["methods"]),
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/report.log",
    shell:
        "flyp report --benchmark {params.benchmark} {params.methods} --results {params.results} "
        "--table {output.table} --metrics-out {output.metrics} > {log} 2>&1"
