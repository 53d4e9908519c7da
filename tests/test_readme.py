"""README.md stays true: its commands exist (every `flyp` subcommand and option) and every
`snakemake` command dry-runs as written; the rules and files it names exist, its "What runs" table
lists every rule with the main job's job counts; its figures match params.yaml. No training."""

from __future__ import annotations

import functools
import math
import os
import re
import shlex
import subprocess

import pytest
import yaml

from flyp.cli import main
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
EMBEDDED = PARAMS["presets"]["embedded"]
MAIN = ("snakemake", "--cores", "all", "results/table.csv")
# The README's fixture folders (ImageNet's, your own images'); the test writes its own copies
FIXTURES = ("/tmp/flyp-fixture", "/tmp/my-images")


def split(line: str) -> list[list[str]]:
    """A shell line as commands of words: `a && b` is two; comments dropped."""
    return [words for part in line.split(" && ") if (words := shlex.split(part, comments=True))]


LINES = [line for b in re.findall(r"```sh\n(.*?)```", README, re.S) for line in b.splitlines()]
COMMANDS = [words for line in LINES for words in split(line)]
INLINE_FLYP = [w for c in re.findall(r"`(flyp [^`]*)`", README) for w in split(c)]
FLYP = list(dict.fromkeys(tuple(w) for w in COMMANDS + INLINE_FLYP if w[0] == "flyp"))
SNAKEMAKE = list(dict.fromkeys(tuple(w) for w in COMMANDS if w[0] == "snakemake"))
# The job count a command's comment states (`snakemake ...   # 151 jobs`).
STATED_JOBS = {
    tuple(split(line)[-1]): int(m[1]) for line in LINES if (m := re.search(r"#\s*(\d+) jobs", line))
}


def tables() -> list[list[list[str]]]:
    """Every Markdown table of the README as rows of cells, the header first."""
    found, rows = [], []
    for line in [*README.splitlines(), ""]:
        if line.strip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set("".join(cells)) - set("-: "):
                rows.append(cells)
        elif rows:
            found, rows = [*found, rows], []
    return found


def table(*header: str) -> list[dict[str, str]]:
    rows = next(t for t in tables() if all(h in t[0] for h in header))
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def workflow_rules() -> set[str]:
    text = "\n".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    return set(re.findall(r"^\s*(?:rule|checkpoint|use rule \w+ as) (\w+)", text, re.M))


@functools.cache
def dry_run(words: tuple[str, ...]) -> dict[str, int]:
    """`snakemake -n --forceall` of the command in the repository root: its job counts."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = ["snakemake", "-n", "--forceall", *(w.replace("$PWD", str(ROOT)) for w in words[1:])]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{shlex.join(words)}:\n{done.stderr[-3000:]}"
    stats = done.stdout.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


@pytest.fixture(scope="module")
def fixture_dirs(tmp_path_factory):
    """The README's `flyp fixture` commands, each writing into a folder of the test's own."""
    made = {}
    for folder in FIXTURES:
        out = tmp_path_factory.mktemp("readme") / "fixture"
        words = next(w for w in FLYP if w[:2] == ("flyp", "fixture") and folder in w)
        words = [x.replace(folder, str(out)) for x in words]
        subprocess.run(words, check=True, capture_output=True)
        made[folder] = str(out)
    return made


def test_the_two_commands_are_there_as_ci_and_newcomers_run_them():
    for command in ("snakemake --cores all results/table.csv", "pytest"):
        assert f'pip install -c constraints.txt -e ".[test]" && {command}\n' in README


@pytest.mark.parametrize("words", FLYP, ids=" ".join)
def test_flyp_commands_exist(words):
    command = main if words[1].startswith("-") else main.commands.get(words[1])
    assert command is not None, f"no subcommand `flyp {words[1]}`"
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for word in words[2:]:
        assert not word.startswith("-") or word.split("=")[0] in options, (words, word)


@pytest.mark.parametrize("words", SNAKEMAKE, ids=" ".join)
def test_snakemake_commands_dry_run(words, request):
    stated = STATED_JOBS.get(words)
    for folder in FIXTURES:
        if any(folder in w for w in words):
            out = request.getfixturevalue("fixture_dirs")[folder]
            words = tuple(w.replace(folder, out) for w in words)
    assert stated is None or dry_run(words)["total"] == stated, words
    dry_run(words)


def test_what_runs_lists_every_rule_with_the_main_jobs_counts():
    rows = {re.search(r"`(\w+)`", r["rule"])[1]: int(r["jobs"]) for r in table("rule", "jobs")}
    assert set(rows) == workflow_rules() - {"all"}
    jobs = dry_run(MAIN)
    assert rows == {rule: jobs.get(rule, 0) for rule in rows}
    assert sum(rows.values()) == jobs["total"] and f"{jobs['total']} jobs" in README
    named = re.findall(r"\brule\s+`(\w+)`|`(\w+)`\s+(?:rule|checkpoint)\b", README, re.I)
    assert {a or b for a, b in named} <= workflow_rules()


def test_repository_paths_exist():
    named = set(re.findall(r"`([^`\s]+)`", README)) | set(re.findall(r"\]\(([^)\s]+)\)", README))
    prefixes = ("flyp/", "workflow/", "benchmarks/", "tests/", "docs/", ".ci/")
    for name in sorted(n for n in named if n.startswith(prefixes) and not re.search("[<{]", n)):
        path, _, test = name.partition("::")
        assert list(ROOT.glob(path)), f"README names `{name}`, not in the repository"
        assert not test or f"def {test}(" in (ROOT / path).read_text(), name


def test_sweep_grids_and_run_counts_match_params():
    total, seen = 0, set()
    for row in table("methods", "grid (`params.yaml`)", "grid runs each"):
        grid = {
            key: [float(v) for v in values.split(",") if v.strip()]
            for key, values in re.findall(r"`(\w+)`: ([\d.e\-, ]+)", row["grid (`params.yaml`)"])
        }
        for method in re.findall(r"`(\w+)`", row["methods"]):
            assert EMBEDDED["sweep"][method] == grid, method
            assert int(row["grid runs each"]) == math.prod(map(len, grid.values())), method
            total, seen = total + int(row["grid runs each"]), seen | {method}
    assert seen == set(EMBEDDED["sweep"])
    assert set(re.findall(r"(\d+) grid runs", README)) == {str(total)}


def test_fewshot_table_matches_params():
    rows = {re.search(r"`(\w+)`", r["preset"])[1]: r for r in table("preset", "k", "draws")}
    assert set(rows) == {name for name, p in PARAMS["presets"].items() if p.get("fewshot")}
    for name, row in rows.items():
        protocol = PARAMS["presets"][name]["fewshot"]
        train = {**PARAMS["presets"][name]["finetune"], **protocol.get("finetune", {})}
        assert [int(k) for k in row["k"].split(",")] == protocol["shots"], name
        assert int(row["draws"]) == protocol["draws"], name
        assert re.findall(r"`(\w+)`", row["methods"]) == protocol["methods"], name
        stated = (int(row["epochs"]), float(row["lr"]), float(row["wd"]))
        assert stated == (train["epochs"], train["lr"], train["wd"]), name


def test_seeds_and_alphas_match_params_and_the_cli():
    expected = {"seeds": PARAMS["seeds"], "alphas": EMBEDDED["alphas"]}
    expected["pretrain.seeds"] = EMBEDDED["pretrain"]["seeds"]
    stated = re.findall(r"`(seeds|alphas|pretrain\.seeds): (\[[^\]]*\])`", README)
    assert {key for key, _ in stated} == set(expected)
    for key, value in stated:
        assert yaml.safe_load(value) == expected[key], key
    default = next(p.default for p in main.commands["evaluate"].params if p.name == "alphas")
    assert f"`--alphas {default}`" in README
    wise_ft = [i / 10 for i in range(11)]  # "0, 0.1, ..., 1" for every real preset
    assert "WiSE-FT's 11 points, 0, 0.1, ..., 1" in README
    assert PARAMS["alphas"] is None  # no top-level grid overrides the presets'
    for name, preset in PARAMS["presets"].items():
        if name != "embedded":
            assert preset["alphas"] == wise_ft, name
