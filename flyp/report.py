"""The results table, the DVC metrics file and the ID-vs-OOD figure, with each row's provenance.

Rows: every method (mean and standard deviation over seeds), every finetuned method with weight
ensembling ("<method>+wise", alpha picked on ID-val per seed), and the few-shot runs
("<method>@<k>shot", mean and standard deviation over draws). A standard deviation is the sample
one (ddof 1); over draws it may be numpy's ``np.std`` (ddof 0, as the FLYP reference reports its
few-shot runs), and the table then has a "std_ddof" column saying which each row's is. When a sweep
ran (flyp/sweep.py), a "picked" column names each swept method's setting, and a figure shows every
grid point's ID-val score.

Effective robustness (Taori et al., NeurIPS 2020): a line is fit to the baselines' (ID, OOD)
points in logit space, OOD = f(ID); a method's effective robustness is its OOD accuracy minus f of
its ID accuracy, in points. The baselines are the standard finetuning recipes (LP, FT, LP-FT, L2-SP)
with their weight-ensembling curves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flyp.datasets import get_benchmark
from flyp.io import atomic_path, read_json, sha256_file, write_json, write_text
from flyp.runs import draw_run, full_run
from flyp.sweep import describe

ROBUSTNESS_BASELINES = ["lp", "ft", "lpft", "l2sp"]


def _logit(p):
    p = np.clip(np.asarray(p, float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def fit_robustness_line(points: list[tuple[float, float]]):
    """(slope, intercept) of logit(OOD) against logit(ID), or None with fewer than 2 ID values."""
    if len({round(i, 6) for i, _ in points}) < 2:
        return None
    x, y = _logit([p[0] for p in points]), _logit([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def effective_robustness(line, id_acc: float, ood_acc: float) -> float:
    slope, intercept = line
    predicted = 1 / (1 + np.exp(-(slope * _logit(id_acc) + intercept)))
    return float(ood_acc - predicted)


class Results:
    """Reads results/<benchmark>/<run>/*.json, a run's folder as flyp.runs names it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.read: set[Path] = set()  # every file read, for the record of the table's inputs

    def _path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        self.read.add(path)
        return path

    def metrics(self, run: str, wise: bool = False) -> dict:
        return read_json(self._path(run, "wise_metrics.json" if wise else "metrics.json"))

    def provenance(self, run: str) -> dict:
        return read_json(self._path(run, "provenance.json"))

    def curve(self, run: str) -> pd.DataFrame:
        return pd.read_csv(self._path(run, "wise_curve.csv"))

    def selection(self, method: str) -> dict:
        """The method's sweep selection (`flyp sweep-select`)."""
        return read_json(self._path(method, "sweep.json"))

    def inputs_sha256(self) -> dict[str, str]:
        """The sha256 of every file read, by its path under the root, in path order."""
        return {str(p.relative_to(self.root)): sha256_file(p) for p in sorted(self.read)}


def selected_on(prov: dict) -> str:
    """What picked a run's epoch (and alpha): "val_<ID metric>", "val_loss" (few-shot) or
    "last_epoch" (no selection: the last epoch kept, presets.<name>.selection)."""
    if prov.get("select") == "val_loss":
        return "val_loss"
    if prov.get("select") == "last":
        return "last_epoch"
    return f"val_{prov.get('val_metric')}"


def spread(values: np.ndarray, ddof: int = 1) -> float:
    """The standard deviation of ``values`` with ``ddof`` delta degrees of freedom (1: the sample
    std; 0: numpy's default, ``np.std``); 0 for a single value."""
    return float(values.std(ddof=ddof)) if len(values) > 1 else 0.0


def _aggregate(name, metrics, provs, columns, label, extra=None, ddof=1) -> tuple[dict, dict]:
    """A table row (percent, mean and std over runs, ``spread`` with ``ddof``) and its
    nested-metrics entry (fractions)."""
    row, nested = {"method": name, "runs": len(metrics)}, {}
    for c in columns:
        values = np.array([m[c] for m in metrics], float)
        mean, std = values.mean(), spread(values, ddof)
        row[label[c]], row[f"{label[c]}_std"] = round(100 * mean, 2), round(100 * std, 2)
        nested[label[c]], nested[f"{label[c]}_std"] = round(mean, 6), round(std, 6)
    row.update(extra or {})
    row.update(
        {
            "selected_on": ";".join(sorted({selected_on(p) for p in provs})),
            "best_epoch": ";".join(str(p["best_epoch"]) for p in provs),
            "seed": ";".join(str(p["seed"]) for p in provs),
            "checkpoint_sha256": ";".join(p["checkpoint_sha256"][:12] for p in provs),
            "data_hash": ";".join(sorted({p["data_hash"][:12] for p in provs})),
            "params_hash": ";".join(p["params_hash"][:12] for p in provs),
            "pretrained_sha256": _unique([p.get("pretrained_sha256") for p in provs], 12),
            "git_revision": _unique(p.get("train_code") for p in provs),
            "eval_revision": _unique(p.get("eval_code") for p in provs),
            "experiment": _unique(p.get("experiment") for p in provs),
        }
    )
    return row, nested


def _unique(values, width: int | None = None) -> str:
    """The distinct values, in order, joined with ";" ("" for None)."""
    seen = dict.fromkeys(str(v or "")[:width] for v in values)
    return ";".join(seen)


DIFFS_README = """Uncommitted code changes the table beside this folder was made with, one file
per change: <commit>+diff.<hash> in its git_revision or eval_revision column is <hash>.diff here.
"""


def save_code_diffs(provs: list[dict], folder: Path) -> None:
    """Each run's code diffs (provenance "code_diffs"), as <hash>.diff files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "README", DIFFS_README)
    for prov in provs:
        for label, diff in (prov.get("code_diffs") or {}).items():
            write_text(folder / f"{label.rsplit('+diff.', 1)[1]}.diff", diff)


PROVENANCE_COLUMNS = [
    "selected_on",
    "best_epoch",
    "seed",
    "checkpoint_sha256",
    "data_hash",
    "params_hash",
    "pretrained_sha256",
    "git_revision",
    "eval_revision",
    "experiment",
]


STD_NOTE = "`_std` over seeds (or few-shot draws)"
# With a "std_ddof" column (Rows.label_ddof): which std each row's is.
STD_DDOF_NOTE = (
    "`_std` over seeds (or few-shot draws), with the `std_ddof` column's delta degrees of "
    "freedom: 1 the sample std, 0 numpy's `np.std` (the FLYP reference's over few-shot draws)"
)


def table_markdown(df: pd.DataFrame, benchmark: str) -> str:
    """The table's numbers for reading (in git, where results/table.csv, in DVC, is not)."""
    revisions = sorted(set(";".join(df["git_revision"].astype(str)).split(";")))
    numbers = df.drop(columns=[c for c in PROVENANCE_COLUMNS if c in df.columns])
    note = STD_DDOF_NOTE if "std_ddof" in df.columns else STD_NOTE
    return (
        f"# Results: {benchmark}\n\nPercent; {note}. Made by "
        f"{', '.join(f'`{r}`' for r in revisions)}; each row's provenance is in "
        "`results/table.csv` (DVC: `dvc pull`, or rebuild it).\n\n"
        f"{numbers.to_markdown(index=False)}\n"
    )


def column_labels(bench) -> dict[str, str]:
    """Each eval set's name, and "avg_ood", -> its name in the table and metrics. The ID test set
    is called "id", whatever its table is named; a set scored with another metric than accuracy
    says which (e.g. "id_macro_f1"), and so does "avg_ood" when every OOD set has that metric."""
    label = {"avg_ood": "avg_ood"}
    for s in bench.eval_sets:
        name = "id" if s is bench.id_set else s.name
        label[s.name] = name if s.metric == "accuracy" else f"{name}_{s.metric}"
    if (
        bench.ood_sets
        and len({s.metric for s in bench.ood_sets}) == 1
        and bench.ood_sets[0].metric != "accuracy"
    ):
        label["avg_ood"] = f"avg_ood_{bench.ood_sets[0].metric}"
    return label


class Rows:
    """The table's rows as they are read from the runs' files, with what the rest of the report
    takes from the same runs."""

    def __init__(self, res: Results, columns: list[str], label: dict[str, str]):
        self.res, self.columns, self.label = res, columns, label
        self.rows: list[dict] = []
        self.ddof: list[int] = []  # each row's std's delta degrees of freedom
        self.nested: dict[str, dict] = {}  # row name -> its nested-metrics entry
        self.provs: list[dict] = []  # of every run behind a row ("+wise" rows reuse theirs)
        self.points: list[tuple] = []  # (method, alpha, id, ood) for the figure
        self.full: dict[str, list[dict]] = {}  # method -> its runs' metrics, for the robustness fit

    def _add(self, name: str, metrics: list[dict], provs: list[dict], extra=None, ddof=1) -> None:
        row, self.nested[name] = _aggregate(
            name, metrics, provs, self.columns, self.label, extra, ddof
        )
        self.rows.append(row)
        self.ddof.append(ddof)

    def add_methods(self, methods: list[str], seeds: list[int]) -> None:
        """A row per method, over seeds."""
        for m in methods:
            metrics = self.full[m] = [self.res.metrics(full_run(m, s)) for s in seeds]
            provs = [self.res.provenance(full_run(m, s)) for s in seeds]
            self._add(m, metrics, provs)
            self.provs += provs

    def add_wise(self, methods: list[str], seeds: list[int], id_key: str) -> None:
        """A row per method with weight ensembling ("<method>+wise"), over seeds, and the points
        of its curve: at each alpha, the mean over seeds."""
        for m in methods:
            metrics = [self.res.metrics(full_run(m, s), wise=True) for s in seeds]
            provs = [self.res.provenance(full_run(m, s)) for s in seeds]
            alphas = ";".join(f"{x['alpha']:g}" for x in metrics)
            self._add(f"{m}+wise", metrics, provs, {"alpha": alphas})
            curves = pd.concat([self.res.curve(full_run(m, s)) for s in seeds])
            for alpha, c in curves.groupby("alpha").mean(numeric_only=True).iterrows():
                self.points.append(
                    (m, float(alpha), float(c[id_key]), float(c.get("avg_ood", np.nan)))
                )

    def add_fewshot(self, methods: list[str], shots: list[int], draws: int, ddof: int = 1):
        """A row per few-shot method and shot count ("<method>@<k>shot"), over draws (their std
        with ``ddof``)."""
        for m in methods:
            for k in sorted(shots):
                name = f"{m}@{k}shot"
                metrics = [self.res.metrics(draw_run(m, k, d)) for d in range(draws)]
                provs = [self.res.provenance(draw_run(m, k, d)) for d in range(draws)]
                self._add(name, metrics, provs, ddof=ddof)
                self.provs += provs

    def label_ddof(self, df: pd.DataFrame) -> None:
        """Where a row's std is not the sample std (ddof 1), a "std_ddof" column (before
        "selected_on") and a "std_ddof" key in every nested-metrics entry say each row's; none
        otherwise (the table as it was)."""
        if all(d == 1 for d in self.ddof):
            return
        df.insert(df.columns.get_loc("selected_on"), "std_ddof", self.ddof)
        for row, ddof in zip(self.rows, self.ddof, strict=True):
            self.nested[row["method"]]["std_ddof"] = ddof


def insert_effective_robustness(df: pd.DataFrame, rows: Rows, methods: list[str], id_key: str):
    """The line fit to the baselines' points (their runs and weight-ensembling curves), or None;
    each row's effective robustness goes into ``df`` (an "eff_robustness" column before
    "selected_on", NaN without a line) and into its nested-metrics entry."""
    baseline = [(i, o) for m, _, i, o in rows.points if m in ROBUSTNESS_BASELINES]
    baseline += [
        (x[id_key], x["avg_ood"])
        for m in methods
        if m in ROBUSTNESS_BASELINES
        for x in rows.full[m]
    ]
    line = fit_robustness_line(baseline)
    eff = []
    for r in rows.rows:
        if line is None:
            eff.append(np.nan)
            continue
        e = effective_robustness(line, r[rows.label[id_key]] / 100, r[rows.label["avg_ood"]] / 100)
        eff.append(round(100 * e, 2))
        rows.nested[r["method"]]["eff_robustness"] = round(e, 6)
    df.insert(df.columns.get_loc("selected_on"), "eff_robustness", eff)
    return line


def picked_column(df: pd.DataFrame, selections: dict[str, dict]) -> list[str]:
    """Each row's "picked" value: the setting the sweep picked for its method, "" for a few-shot
    row or a method not swept."""
    picked = {m: describe(s["trained"]) for m, s in selections.items()}
    return [
        "" if "@" in name else picked.get(name.removesuffix("+wise"), "") for name in df["method"]
    ]


def write_report(
    benchmark_name: str,
    results_dir: Path,
    *,
    methods: list[str],
    seeds: list[int],
    wise_methods: list[str],
    fewshot_methods: list[str] = (),
    shots: list[int] = (),
    draws: int = 0,
    fewshot_std_ddof: int = 1,
    table: Path,
    metrics_out: Path,
    plot_out: Path | None = None,
    plot_csv: Path | None = None,
    code_dir: Path | None = None,
    inputs_out: Path | None = None,
    markdown: Path | None = None,
    sweep_methods: list[str] = (),
    sweep_plot: Path | None = None,
    sweep_csv: Path | None = None,
) -> pd.DataFrame:
    """The table (``table``), the DVC metrics file (``metrics_out``), the figure and its data, the
    code diffs the rows name (``code_dir``, default: ``code`` beside the table) and the sha256 of
    every per-run file the table was made from (``inputs_out``), and the table's numbers as
    Markdown (``markdown``). With ``sweep_methods`` (those a sweep picked a setting for), the
    table's "picked" column and the sweep's figure (``sweep_plot``) and its data (``sweep_csv``);
    without, the table has no such column. The std over few-shot draws is with
    ``fewshot_std_ddof`` (0: a "std_ddof" column says so, ``Rows.label_ddof``)."""
    bench = get_benchmark(benchmark_name)
    res = Results(results_dir)
    columns = [s.name for s in bench.eval_sets] + (["avg_ood"] if bench.ood_sets else [])
    label, id_key = column_labels(bench), bench.id_set.name
    rows = Rows(res, columns, label)
    rows.add_methods(methods, seeds)
    rows.add_wise(wise_methods, seeds, id_key)
    rows.add_fewshot(fewshot_methods, shots, draws, fewshot_std_ddof)
    df = pd.DataFrame(rows.rows)
    if bench.ood_sets:
        line = insert_effective_robustness(df, rows, methods, id_key)
        if plot_out is not None:
            plot_id_vs_ood(df, rows.points, line, label, plot_out, plot_csv, bench.name)
    elif plot_out is not None:  # (Caltech101, Cars, ...: no OOD set to plot against)
        plot_id_vs_alpha(rows.points, label[id_key], plot_out, plot_csv, bench.name)
    if sweep_methods:
        selections = {m: res.selection(m) for m in sweep_methods}
        df.insert(df.columns.get_loc("selected_on"), "picked", picked_column(df, selections))
        if sweep_plot is not None:
            plot_sweep(selections, sweep_plot, sweep_csv, bench.name)
    rows.label_ddof(df)
    with atomic_path(table) as tmp:
        df.to_csv(tmp, index=False)
    write_json(metrics_out, rows.nested)
    if markdown is not None:
        write_text(markdown, table_markdown(df, bench.name))
    save_code_diffs(rows.provs, Path(code_dir or Path(table).parent / "code"))
    if inputs_out is not None:
        write_json(inputs_out, res.inputs_sha256())
    return df


def plot_id_vs_alpha(points, id_label: str, out: Path, csv_out: Path | None, title: str):
    """For a benchmark without OOD sets: the ID score along each method's weight-ensembling curve
    (alpha 0 = zero-shot, 1 = the finetuned model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = pd.DataFrame([p[:3] for p in points], columns=["method", "alpha", "id"])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for m, group in curve.groupby("method", sort=False):
        ax.plot(group["alpha"], 100 * group["id"], "o-", ms=4, label=m)
    ax.set_xlabel("weight-ensembling alpha (0: zero-shot, 1: finetuned)")
    ax.set_ylabel(f"ID test {id_label} (%)")
    ax.set_title(f"{title}: ID score along weight ensembling (mean over seeds)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    curve["id"] = (100 * curve["id"]).round(2)
    save_figure(fig, out, curve, csv_out)


def plot_id_vs_ood(df, points, line, label, out: Path, csv_out: Path | None, title: str):
    """OOD against ID accuracy: one point per method, each WiSE-FT curve through its alpha grid,
    the zero-shot model starred, the baselines' fitted line dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    id_col, ood_col = (
        label[next(k for k, v in label.items() if v.startswith("id"))],
        label["avg_ood"],
    )
    fig, ax = plt.subplots(figsize=(7.5, 6))
    full = df[~df["method"].str.contains("@")]
    colors = {}
    for m, group in pd.DataFrame(points, columns=["method", "alpha", "id", "ood"]).groupby(
        "method", sort=False
    ):
        (line_,) = ax.plot(100 * group["id"], 100 * group["ood"], "-", lw=1.2, alpha=0.7)
        colors[m] = line_.get_color()
    for _, r in full.iterrows():
        base = r["method"].removesuffix("+wise")
        marker = "*" if base == "zeroshot" else ("s" if r["method"].endswith("+wise") else "o")
        ax.errorbar(
            r[id_col],
            r[ood_col],
            xerr=r[f"{id_col}_std"],
            yerr=r[f"{ood_col}_std"],
            fmt=marker,
            ms=14 if marker == "*" else 7,
            color=colors.get(base, "black"),
            capsize=2,
        )
        ax.annotate(
            r["method"],
            (r[id_col], r[ood_col]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    if line is not None:
        xs = np.linspace(full[id_col].min() - 2, full[id_col].max() + 2, 50) / 100
        slope, intercept = line
        ys = 1 / (1 + np.exp(-(slope * _logit(xs) + intercept)))
        ax.plot(100 * xs, 100 * ys, "k--", lw=0.8, label="baselines' fit (logit space)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("ID test accuracy (%)")
    ax.set_ylabel("average OOD accuracy (%)")
    ax.set_title(
        f"{title}: ID vs OOD (mean over seeds; lines: weight ensembling, alpha 0 to 1)", fontsize=9
    )
    ax.grid(alpha=0.3)
    curve = pd.DataFrame(points, columns=["method", "alpha", "id", "avg_ood"])
    curve[["id", "avg_ood"]] = (100 * curve[["id", "avg_ood"]]).round(2)
    save_figure(fig, out, curve, csv_out)


def sweep_x_key(grid: dict) -> str:
    """The grid key a sweep's figure puts along x: lr where the grid has it, else its first."""
    return "lr" if "lr" in grid else next(iter(grid))


def sweep_lines(selection: dict) -> list[tuple[str, list, list[float], list[bool]]]:
    """A swept method's grid as lines to draw: its first key (lr where the grid has it) along x,
    one line per combination of the other keys' values, each ``(label, x values, ID-val scores,
    picked flags)`` in grid order; the label names the other keys' values ("" for a one-key
    grid)."""
    x_key = sweep_x_key(selection["grid"])
    others = [k for k in selection["grid"] if k != x_key]
    lines: dict[str, tuple[list, list[float], list[bool]]] = {}
    for r in selection["runs"]:
        label = describe({k: r["trained"][k] for k in others})
        xs, ys, picked = lines.setdefault(label, ([], [], []))
        xs.append(r["trained"][x_key])
        ys.append(r["val_score"])
        picked.append(r["point"] == selection["picked_point"])
    return [(label, *line) for label, line in lines.items()]


def plot_sweep(selections: dict[str, dict], out: Path, csv_out: Path | None, title: str):
    """Each swept method's ID-val score at every point of its grid (the first seed's runs), the
    picked point circled: one panel per method, its first grid key (lr) along x (a log axis when
    every value is positive), one line per value of its other keys (L2-SP's lambda)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        {
            "method": m,
            "setting": describe(r["trained"]),
            "val_metric": r["val_metric"],
            "val_score": r["val_score"],
            "best_epoch": r["best_epoch"],
            "picked": r["point"] == s["picked_point"],
        }
        for m, s in selections.items()
        for r in s["runs"]
    ]
    data = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, len(selections), figsize=(4.5 * len(selections), 4), squeeze=False)
    for ax, (m, s) in zip(axes[0], selections.items(), strict=True):
        lines = sweep_lines(s)
        for label, xs, ys, _ in lines:
            ax.plot(xs, 100 * np.asarray(ys), "o-", ms=5, label=label or None)
        best = [
            (x, y)
            for _, xs, ys, picked in lines
            for x, y, p in zip(xs, ys, picked, strict=True)
            if p
        ]
        ax.plot(
            [x for x, _ in best],
            [100 * y for _, y in best],
            "o",
            ms=12,
            mfc="none",
            color="red",
            label="picked",
        )
        if all(isinstance(x, int | float) and x > 0 for _, xs, _, _ in lines for x in xs):
            ax.set_xscale("log")
        ax.set_xlabel(sweep_x_key(s["grid"]), fontsize=8)
        ax.set_title(m, fontsize=9)
        ax.set_ylabel(f"ID-val {s['val_metric']} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: the sweep, ID-val per grid point (first seed)", fontsize=9)
    data["val_score"] = (100 * data["val_score"]).round(2)
    save_figure(fig, out, data, csv_out)


def save_figure(fig, out: Path, points: pd.DataFrame, csv_out: Path | None) -> None:
    """Write ``fig`` as a PNG and, when ``csv_out`` is given, the numbers it plots (in %), each
    atomically; then free the figure."""
    import matplotlib.pyplot as plt

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format="png")
    plt.close(fig)
    if csv_out is not None:
        with atomic_path(csv_out) as tmp:
            points.to_csv(tmp, index=False)
