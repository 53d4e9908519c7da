# The results table (a row per method, its weight-ensembled variant and the few-shot runs, with
# provenance), the DVC metrics file and the ID-vs-OOD figure. results/table.csv is a DVC output,
# not in git: a fresh clone lacks it, so `snakemake results/table.csv` rebuilds it (Snakemake would
# take a committed copy as up to date). Its numbers are in git as results/table.md and, for
# `dvc metrics diff`, results/metrics.json.

# Weight ensembling runs for every method (zero-shot with itself is free), so that DVC can
# declare it over the same matrix; the table has a "+wise" row for every method but zero-shot.
WISE_METHODS = list(RUN["methods"])
# With a sweep (common.smk: SWEEP), the selections too: the table's "picked" column and the figure
# of ID-val against each grid point. Without, the same inputs, outputs and command as before.
SWEEP_REPORT = (
    {
        "input": {"sweep": expand(f"{RESULTS}/{{method}}/sweep.json", method=SWEEP)},
        "output": {"sweep_plot": "results/plots/sweep.png", "sweep_csv": "results/plots/sweep.csv"},
    }
    if SWEEP
    else {"input": {}, "output": {}}
)


rule report:
    input:
        metrics=expand(
            f"{RESULTS}/{runs.FULL}/{{file}}.json",
            method=RUN["methods"],
            seed=SEEDS,
            file=["metrics", "provenance"],
        ),
        wise=expand(
            f"{RESULTS}/{runs.FULL}/{{file}}",
            method=WISE_METHODS,
            seed=SEEDS,
            file=["wise_metrics.json", "wise_curve.csv"],
        ),
        fewshot=expand(
            f"{RESULTS}/{runs.DRAW}/{{file}}.json",
            method=FEWSHOT["methods"],
            shots=FEWSHOT["shots"],
            draw=DRAWS,
            file=["metrics", "provenance"],
        ),
        **SWEEP_REPORT["input"],
    output:
        table="results/table.csv",
        metrics="results/metrics.json",
        plot="results/plots/id_vs_ood.png",
        plot_csv="results/plots/id_vs_ood.csv",
        code=directory("results/code"),
        inputs=f"{RESULTS}/table_inputs.json",  # sha256 of every per-run file the table read
        markdown="results/table.md",
        **SWEEP_REPORT["output"],
    params:
        benchmark=BENCHMARK_ARG,
        bench=BENCH_SPEC,
        code=step_code("report"),
        results=lambda wildcards, output: os.path.dirname(output.inputs),
        methods=",".join(RUN["methods"]),
        seeds=",".join(str(s) for s in SEEDS),
        wise=",".join(m for m in WISE_METHODS if m != "zeroshot"),
        fewshot_methods=",".join(FEWSHOT["methods"]),
        shots=",".join(str(k) for k in FEWSHOT["shots"]),
        draws=len(DRAWS),
        # the std over draws: the sample std, or (fewshot.std_ddof 0) numpy's; the option only
        # then, so that the default's command is as it was
        std_ddof=(
            f" --fewshot-std-ddof {int(FEWSHOT['std_ddof'])}" if FEWSHOT["std_ddof"] != 1 else ""
        ),
        sweep=report_sweep_args,
    threads: job_threads("light")
    resources:
        **job_size("light"),
    conda:
        ENV
    log:
        f"logs/{BENCHMARK}/report.log",
    shell:
        # --option=value: a list can be empty (no few-shot runs), and an empty word would vanish
        "flyp report --benchmark {params.benchmark:q} --results {params.results:q} "
        "--methods={params.methods:q} --seeds={params.seeds:q} --wise-methods={params.wise:q} "
        "--fewshot-methods={params.fewshot_methods:q} --shots={params.shots:q} "
        "--draws {params.draws:q}{params.std_ddof} "
        "--table {output.table} --metrics-out {output.metrics} --plot-out {output.plot} "
        "--plot-csv {output.plot_csv} --code-dir {output.code} --inputs-out {output.inputs} "
        "--markdown {output.markdown}{params.sweep} > {log} 2>&1"
