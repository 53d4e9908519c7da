"""Reading params.yaml: coerce, fill defaults, validate against the schema, resolve presets.

The workflow calls ``load_params`` once at parse time, so a bad parameter stops the run with one
line naming the key before any job starts. DVC writes ``-S lr=1e-5`` as ``lr: 1e-05``, which
YAML 1.1 loaders read as a *string*: numeric strings are turned into numbers wherever the schema
expects one.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from flyp.io import UserError

# Finetuning keys a user may set at the top level of params.yaml (null: keep the preset's value).
TOP_LEVEL_FINETUNE_KEYS = ["lr", "wd", "epochs", "batch_size", "warmup_steps"]
# Training settings a preset may override for one method under ``method_options.<method>`` (typed
# by the schema); the workflow moves them out of the method's own options. ``lr_scale`` multiplies
# the shared lr instead of replacing it.
METHOD_TRAIN_KEYS = (
    "epochs",
    "lr",
    "wd",
    "batch_size",
    "warmup_steps",
    "grad_clip",
    "precision",
    "decay",
    "clamp_logit_scale",
)
METHOD_LR_SCALE = "lr_scale"
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return data or {}


def _types(value) -> set[str]:
    return {value} if isinstance(value, str) else set(value)


def _set(obj, path, value) -> None:
    for key in list(path)[:-1]:
        obj = obj[key]
    obj[list(path)[-1]] = value


def coerce_numbers(config: dict, validator) -> dict:
    """Turn numeric strings into numbers where the schema wants a number or integer."""
    for _ in range(1000):
        fixed = False
        for error in validator.iter_errors(config):
            for e in [error, *error.context]:
                if (
                    e.validator == "type"
                    and isinstance(e.instance, str)
                    and _types(e.validator_value) & {"number", "integer"}
                    and _NUMBER.match(e.instance.strip())
                ):
                    number = float(e.instance)
                    if "integer" in _types(e.validator_value) and number.is_integer():
                        number = int(number)
                    _set(config, e.absolute_path, number)
                    fixed = True
                    break
            if fixed:
                break
        if not fixed:
            return config
    return config


def fill_defaults(instance, schema: dict, root: dict) -> None:
    """Insert the schema's ``default`` for every missing property (recursively, through $ref)."""
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        resolved = sub
        while "$ref" in resolved:
            resolved = root["$defs"][resolved["$ref"].split("/")[-1]]
        if key not in instance and "default" in resolved:
            instance[key] = copy.deepcopy(resolved["default"])
        if key in instance:
            fill_defaults(instance[key], resolved, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                fill_defaults(value, extra, root)


def _where(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


# The kinds of job the rules size (presets.<name>.resources): fetch (download, extract), prepare
# (the tables), pretrain (here, or the export of released weights), finetune (a method that trains),
# infer (features, the eval cache, evaluation, zero-shot and the linear probe) and light (captions,
# the report, copies).
JOB_KINDS = ("fetch", "prepare", "pretrain", "finetune", "infer", "light")


def validate(config: dict, schema: dict, source: str = "params.yaml") -> dict:
    """Coerced, default-filled copy of ``config``; raises UserError naming the first bad key."""
    config = copy.deepcopy(config)
    validator = jsonschema.Draft202012Validator(schema)
    coerce_numbers(config, validator)
    error = best_match(validator.iter_errors(config))
    if error is not None:
        raise UserError(f"{source}: {_where(error.absolute_path)}: {error.message}")
    overlays = copy.deepcopy(config.get("scales"))
    fill_defaults(config, schema, schema)
    if overlays is not None:  # a scale overrides only what it sets, never with a default
        config["scales"] = overlays
    return config


def _merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve(params: dict, source: str = "params.yaml") -> dict:
    """The settings of this run: preset of the benchmark, then the scale, then top-level keys."""
    benchmark, scale = params["benchmark"], params["scale"]
    if benchmark not in params["presets"]:
        raise UserError(
            f"{source}: benchmark: no preset {benchmark!r} under presets; "
            f"expected one of {sorted(params['presets'])}"
        )
    if scale not in params["scales"]:
        raise UserError(
            f"{source}: scale: unknown scale {scale!r}; expected one of {sorted(params['scales'])}"
        )
    run = _merge(params["presets"][benchmark], params["scales"][scale])
    run.setdefault("finetune", {})
    fixed = {key: params[key] for key in TOP_LEVEL_FINETUNE_KEYS if params.get(key) is not None}
    run["finetune"].update(fixed)
    for stage in ("pretrain", "finetune"):
        for key in ("epochs", "lr", "wd", "batch_size"):
            if run.get(stage, {}).get(key) is None and (
                stage == "finetune" or not run["model"].get("pretrained")
            ):
                raise UserError(f"{source}: presets.{benchmark}.{stage}.{key}: no value set")
    if "seeds" in run.get("finetune", {}):
        raise UserError(
            f"{source}: presets.{benchmark}.finetune.seeds: finetuning seeds are the "
            f"top-level `seeds`"
        )
    # The pretraining seeds: one CLIP pretrained here per seed (none when released weights are
    # exported). With several, run i of each method (seed i, or few-shot draw i) starts from the
    # (i mod n)-th (common.smk: pretrain_seed).
    pretrain = run.get("pretrain", {})
    run["pretrain_seeds"] = (
        []
        if run["model"].get("pretrained")
        else list(pretrain.pop("seeds", None) or [pretrain.get("seed", 0)])
    )
    if not run.get("model", {}).get("name"):
        raise UserError(f"{source}: presets.{benchmark}.model.name: no model set")
    for kind in JOB_KINDS:
        if kind not in run.get("resources", {}):
            raise UserError(
                f"{source}: presets.{benchmark}.resources.{kind}: not set; expected "
                f"{{threads: N, mem_mb: N, runtime: minutes}}"
            )
    run.setdefault("method_options", {})
    run.setdefault("sweep", {})  # method -> grid (flyp/sweep.py); none: every method as set
    # A top-level finetuning key (`dvc exp run -S lr=1e-5`) sets it for every method: no grid
    # varies it any more (a grid left with no key: the method is not swept).
    run["sweep"] = {
        method: kept
        for method, grid in run["sweep"].items()
        if (kept := {k: v for k, v in grid.items() if k not in fixed})
    }
    # The preset's few-shot protocol (after the scale's overrides); none when it has no `fewshot`.
    run["fewshot"] = _merge(
        {"shots": [], "draws": 0, "methods": [], "finetune": {}}, run.get("fewshot") or {}
    )
    alphas = sorted(float(a) for a in params["alphas"])
    if alphas[0] != 0.0 or alphas[-1] != 1.0:
        raise UserError(f"{source}: alphas: must include 0 (zero-shot) and 1 (finetuned)")
    run.update(
        benchmark=benchmark,
        scale=scale,
        seeds=list(params["seeds"]),
        alphas=alphas,
        methods=list(params["methods"]),
        runtime=params["runtime"],
    )
    return run


def check_names(run: dict, source: str = "params.yaml") -> None:
    """Benchmark and method names must be registered."""
    from flyp.datasets import benchmark_names
    from flyp.workflow.catalog import method_names

    if run["benchmark"] not in benchmark_names():
        raise UserError(
            f"{source}: benchmark: unknown benchmark {run['benchmark']!r}; "
            f"expected one of {benchmark_names()}"
        )
    for method in run["methods"]:
        if method not in method_names():
            raise UserError(
                f"{source}: methods: unknown method {method!r}; expected one of {method_names()}"
            )
    for method in run["method_options"]:
        if method not in method_names():
            raise UserError(f"{source}: method_options: unknown method {method!r}")
    for method in run["fewshot"]["methods"]:
        if method not in method_names():
            raise UserError(
                f"{source}: presets.{run['benchmark']}.fewshot.methods: unknown "
                f"method {method!r}; "
                f"expected one of {method_names()}"
            )


def check_method_options(run: dict, source: str = "params.yaml") -> None:
    """Each method's options must be a training key or one the method declares (not an input:
    the workflow passes those), of the declared type and range; one line naming the key."""
    from flyp.options import describe_options
    from flyp.workflow.catalog import method_info

    shared = (*METHOD_TRAIN_KEYS, METHOD_LR_SCALE)
    for name, options in run["method_options"].items():
        specs = method_info(name).option_specs(with_inputs=False)
        for key, value in options.items():
            where = f"{source}: presets.{run['benchmark']}.method_options.{name}.{key}"
            if key in shared:
                continue
            if key not in specs:
                raise UserError(
                    f"{where}: unknown option of method {name}; valid options: "
                    f"{describe_options(specs.values())}, or a training key "
                    f"({', '.join(shared)})"
                )
            try:
                specs[key].parse(value)
            except UserError as e:
                raise UserError(f"{where}: {e}") from None


def check_sweep(run: dict, source: str = "params.yaml") -> None:
    """Each grid must name a registered method and vary a setting it has (flyp.sweep.check_grid);
    a method the run does not include is allowed (its grid is then unused)."""
    from flyp.sweep import check_grid
    from flyp.workflow.catalog import method_info, method_names

    for name, grid in run["sweep"].items():
        where = f"{source}: presets.{run['benchmark']}.sweep.{name}"
        if name not in method_names():
            raise UserError(f"{where}: unknown method {name!r}; expected one of {method_names()}")
        check_grid(name, grid, method_info(name), where)


def load_params(config: dict, schema_path: str | Path, source: str = "params.yaml") -> dict:
    """Validate the raw params (as Snakemake loaded them) and return the resolved run settings."""
    schema = read_yaml(schema_path)
    params = validate(config, schema, source)
    run = resolve(params, source)
    check_names(run, source)
    check_method_options(run, source)
    check_sweep(run, source)
    return run
