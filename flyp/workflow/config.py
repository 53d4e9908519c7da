"""Reading params.yaml: coerce, fill defaults, validate against the schema, resolve presets.

The workflow calls ``load_params`` once at parse time, so a bad parameter stops the run with one
line naming the key before any job starts. DVC writes ``-S lr=1e-5`` as ``lr: 1e-05``, which
YAML 1.1 loaders read as a *string*: numeric strings are turned into numbers wherever the schema
expects one.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import yaml
from jsonschema.exceptions import best_match

from flyp.io import UserError
from flyp.settings import AUGMENTATIONS, REQUIRED, STD_DDOFS, TIES, TOP_LEVEL, TRAINING

# The training settings (flyp.settings): those a method's ``method_options`` may set, besides
# ``lr_scale`` (a factor on whatever lr the other layers give it), and those params.yaml may set
# at its top level for every method (null: not set).
TRAIN_KEYS = tuple(s.name for s in TRAINING)
LR_SCALE = "lr_scale"
# The few-shot protocol's switches (``presets.<name>.fewshot``) and their defaults (flyp.settings):
# a draw's epoch on a val-loss tie, its augmentation, the table's std over draws.
FEWSHOT_SWITCHES = {
    "val_loss_tie": TIES[0],
    "augmentation": AUGMENTATIONS[0],
    "std_ddof": STD_DDOFS[0],
}
DRAW_SWITCHES = ("val_loss_tie", "augmentation")  # those a draw trains with (std_ddof: report's)
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


def _scalar(text: str, types: set[str]):
    """The number, boolean or null that ``text`` spells where the schema wants one of ``types``,
    or ``text`` itself when it spells none of them."""
    word = text.strip()
    if types & {"number", "integer"} and _NUMBER.match(word):
        number = float(word)
        return int(number) if "integer" in types and number.is_integer() else number
    if "boolean" in types and word.lower() in ("true", "false"):
        return word.lower() == "true"
    if "null" in types and word in ("null", "~"):
        return None
    return text


def coerce_numbers(config: dict, validator) -> dict:
    """Turn numeric strings into numbers where the schema wants a number or integer, and
    ``true``/``false``/``null`` into a boolean or null where it wants one (Snakemake's
    ``--config runtime="{tf32: true}"`` reads nested values as strings)."""
    for _ in range(1000):
        fixed = False
        for error in validator.iter_errors(config):
            for e in [error, *error.context]:
                if e.validator == "type" and isinstance(e.instance, str):
                    value = _scalar(e.instance, _types(e.validator_value))
                    if value is not e.instance:
                        _set(config, e.absolute_path, value)
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
        resolved, default = sub, sub.get("default")  # a default beside a $ref is the one
        while "$ref" in resolved:
            resolved = root["$defs"][resolved["$ref"].split("/")[-1]]
            default = resolved.get("default") if default is None else default
        if key not in instance and (default is not None or "default" in resolved):
            instance[key] = copy.deepcopy(default)
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


def _preset(params: dict, benchmark: str, scale: str, source: str) -> dict:
    """The benchmark's preset with the scale's overrides merged in (a copy)."""
    if benchmark not in params["presets"]:
        raise UserError(
            f"{source}: benchmark: no preset {benchmark!r} under presets; "
            f"expected one of {sorted(params['presets'])}"
        )
    if scale not in params["scales"]:
        raise UserError(
            f"{source}: scale: unknown scale {scale!r}; expected one of {sorted(params['scales'])}"
        )
    return _merge(params["presets"][benchmark], params["scales"][scale])


def _check_required(run: dict, fixed: dict, benchmark: str, source: str) -> None:
    """Every REQUIRED training key has a value: finetuning's (the preset's or a top-level key),
    and pretraining's unless released weights are exported; finetuning seeds are not the
    preset's but the top-level ``seeds``."""
    for stage in ("pretrain", "finetune"):
        settings = {**run.get(stage, {}), **(fixed if stage == "finetune" else {})}
        for key in REQUIRED:
            if settings.get(key) is None and (
                stage == "finetune" or not run["model"].get("pretrained")
            ):
                raise UserError(f"{source}: presets.{benchmark}.{stage}.{key}: no value set")
    if "seeds" in run.get("finetune", {}):
        raise UserError(
            f"{source}: presets.{benchmark}.finetune.seeds: finetuning seeds are the "
            f"top-level `seeds`"
        )


def _pretrain_seeds(run: dict) -> list:
    """The pretraining seeds: one CLIP pretrained here per seed (none when released weights are
    exported), taken out of the pretraining settings. With several, run i of each method (seed i,
    or few-shot draw i) starts from the (i mod n)-th (common.smk: pretrain_seed)."""
    pretrain = run.get("pretrain", {})
    return (
        []
        if run["model"].get("pretrained")
        else list(pretrain.pop("seeds", None) or [pretrain.get("seed", 0)])
    )


def _check_model_and_resources(run: dict, benchmark: str, source: str) -> None:
    """The preset names a model and sizes every kind of job (JOB_KINDS)."""
    if not run.get("model", {}).get("name"):
        raise UserError(f"{source}: presets.{benchmark}.model.name: no model set")
    for kind in JOB_KINDS:
        if kind not in run.get("resources", {}):
            raise UserError(
                f"{source}: presets.{benchmark}.resources.{kind}: not set; expected "
                f"{{threads: N, mem_mb: N, runtime: minutes}}"
            )


def _unfixed_grids(sweep: dict, fixed: dict) -> dict:
    """Each method's grid without the keys a top-level finetuning key (`dvc exp run -S lr=1e-5`)
    sets for every method; a method whose grid is left with no key is not swept."""
    return {
        method: kept
        for method, grid in sweep.items()
        if (kept := {k: v for k, v in grid.items() if k not in fixed})
    }


def _alphas(params: dict, run: dict, source: str) -> list[float]:
    """The weight-ensembling alphas, sorted: the top-level ``alphas`` when set (every preset's),
    else the preset's (``presets.<benchmark>.alphas``, a scale's over it); they include 0
    (zero-shot) and 1 (finetuned)."""
    benchmark, scale = params["benchmark"], params["scale"]
    if params.get("alphas") is not None:
        key, grid = "alphas", params["alphas"]
    elif "alphas" in params["scales"][scale]:
        key, grid = f"scales.{scale}.alphas", run["alphas"]
    else:
        key, grid = f"presets.{benchmark}.alphas", run["alphas"]
    alphas = sorted(float(a) for a in grid)
    if alphas[0] != 0.0 or alphas[-1] != 1.0:
        raise UserError(f"{source}: {key}: must include 0 (zero-shot) and 1 (finetuned)")
    return alphas


def resolve(params: dict, source: str = "params.yaml") -> dict:
    """The settings of this run: the benchmark's preset with the scale's overrides merged in, the
    top-level training keys (``top_level``), every method's grid without the keys these fix, the
    few-shot protocol, seeds, the weight-ensembling alphas (the top-level ones when set, else
    the preset's), methods and runtime (its ``tf32`` the preset's unless set: ``_runtime``). A
    run of one method trains with ``training_settings`` of it."""
    benchmark, scale = params["benchmark"], params["scale"]
    run = _preset(params, benchmark, scale, source)
    run.setdefault("finetune", {})
    if "dataset" in run and not run.get("model", {}).get("pretrained"):
        raise UserError(
            f"{source}: presets.{benchmark}.model.pretrained: a dataset preset has no "
            f"pretraining set; name released weights (an open_clip tag such as openai, or a file)"
        )
    # The top-level training keys (`dvc exp run -S lr=1e-5`): the last layer of every run's
    # settings, every method's (training_settings).
    fixed = run["top_level"] = {
        key: params[key] for key in TOP_LEVEL if params.get(key) is not None
    }
    _check_required(run, fixed, benchmark, source)
    run["pretrain_seeds"] = _pretrain_seeds(run)
    _check_model_and_resources(run, benchmark, source)
    run.setdefault("method_options", {})
    run.setdefault("sweep", {})  # method -> grid (flyp/sweep.py); none: every method as set
    run["sweep"] = _unfixed_grids(run["sweep"], fixed)
    # The preset's few-shot protocol (after the scale's overrides); none when it has no `fewshot`.
    run["fewshot"] = _merge(
        {"shots": [], "draws": 0, "methods": [], "finetune": {}, **FEWSHOT_SWITCHES},
        run.get("fewshot") or {},
    )
    alphas = _alphas(params, run, source)
    run.update(
        benchmark=benchmark,
        scale=scale,
        seeds=list(params["seeds"]),
        alphas=alphas,
        methods=list(params["methods"]),
        runtime=_runtime(params["runtime"], run),
    )
    return run


def _runtime(runtime: dict, run: dict) -> dict:
    """``runtime`` with ``tf32`` resolved: when null (the default), the preset's (after the
    scale's) ``tf32``, false unless it says otherwise: a preset that reproduces the reference
    trains in fp32; true or false: every preset's."""
    tf32 = runtime.get("tf32")
    return {**runtime, "tf32": bool(run.get("tf32", False) if tf32 is None else tf32)}


def training_settings(
    run: dict,
    method: str,
    *,
    seed: int,
    classes: int,
    shots: int | None = None,
    point: dict | None = None,
) -> dict:
    """The training settings (flyp.settings) one run of ``method`` trains with, and its seed. The
    layers, each overriding the one before:

    1. the preset's ``finetune`` (``presets.<benchmark>.finetune``);
    2. the scale's (``scales.<scale>.finetune``);
    3. the method's own (the training keys of ``method_options.<method>``);
    4. for a few-shot run (``shots``: its k), the protocol's (``fewshot.finetune``), whose
       ``batch_size`` null is the whole k x ``classes`` training set;
    5. the sweep's ``point`` (a grid run's own; a full run's, the one picked);
    6. the top-level keys of params.yaml that are set (``lr``, ``wd``, ...): every method, every
       preset;

    then ``lr`` times the method's ``lr_scale`` when it has one (``method_options``), rounded to
    12 significant digits (1e-4 x 0.1 is 1e-05, not 1.0000000000000002e-05)."""
    cfg = dict(run["finetune"])
    options = run["method_options"].get(method, {})
    cfg.update({k: v for k, v in options.items() if k in TRAIN_KEYS})
    if shots is not None:
        cfg.update(run["fewshot"]["finetune"])
        if cfg.get("batch_size") is None:
            cfg["batch_size"] = shots * classes
    cfg.update({k: v for k, v in (point or {}).items() if k in TRAIN_KEYS})
    cfg.update(run["top_level"])
    if LR_SCALE in options:
        cfg["lr"] = float(f"{cfg['lr'] * float(options[LR_SCALE]):.12g}")
    return {**cfg, "seed": seed}


def fewshot_protocol(run: dict) -> dict:
    """The switches a few-shot draw of a method that trains runs with (``val_loss_tie``,
    ``augmentation``; flyp.settings) where the preset's are not the default, so that a draw of
    the default protocol has the settings and command it had before they existed. (A method that
    does not train keeps no epoch and draws no augmentation: it takes neither.)"""
    return {
        key: run["fewshot"][key]
        for key in DRAW_SWITCHES
        if run["fewshot"][key] != FEWSHOT_SWITCHES[key]
    }


# The prepare option of a benchmark whose ID-val is a sample held out of its train split
# (ImageNet): true keeps that sample in train too, as the FLYP reference trains on every image.
VAL_IN_TRAIN = "val_in_train"
# The data option that is not the prepare step's: the shorter side of the train images' resized
# copy (rule resize_train, `flyp resize`), null for none.
TRAIN_RESIZE = "train_resize"


def prepare_options(run: dict, bench) -> dict:
    """The options of ``bench``'s prepare step: the preset's data options less the archive
    sources (those are the download rules') and ``train_resize`` (rule resize_train's). With
    ``selection: last_epoch`` (the FLYP reference's ImageNet protocol: train on every train image,
    keep the last epoch), a benchmark whose prepare step holds ID-val out of train (it takes
    ``val_in_train``) keeps it in train too."""
    if "dataset" in run:  # own data: the options that are not its source
        return {k: v for k, v in run["data"].items() if k in OWN_DATA_PREPARE}
    downloads = {d.name for d in bench.downloads}
    options = {k: v for k, v in run["data"].items() if k not in downloads | {TRAIN_RESIZE}}
    if run.get("selection") == "last_epoch" and VAL_IN_TRAIN in _keywords(bench.prepare):
        options.setdefault(VAL_IN_TRAIN, True)
    return options


def _keywords(function) -> set[str]:
    import inspect

    return set(inspect.signature(function).parameters)


def method_settings(run: dict, method: str, point: dict | None = None) -> dict:
    """The method's own options (``method_options.<method>`` but its training keys and
    ``lr_scale``), with those of the sweep's ``point`` (L2-SP's ``lambda``) over them."""
    options = {
        k: v
        for k, v in run["method_options"].get(method, {}).items()
        if k not in TRAIN_KEYS and k != LR_SCALE
    }
    return {**options, **{k: v for k, v in (point or {}).items() if k not in TRAIN_KEYS}}


def check_names(run: dict, source: str = "params.yaml") -> None:
    """Benchmark and method names must be registered."""
    from flyp.datasets import benchmark_names
    from flyp.workflow.catalog import method_names

    if "dataset" not in run and run["benchmark"] not in benchmark_names():
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

    shared = (*TRAIN_KEYS, LR_SCALE)
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


def with_own_data_defaults(config: dict) -> dict:
    """A copy of ``config`` where every preset that names a ``dataset`` (a user's own data:
    imagefolder or csv) has the top-level ``own_data`` settings (model, finetuning, alphas,
    method options, resources) under its own, so that it validates and resolves as the others."""
    presets = config.get("presets")
    if not isinstance(presets, dict) or not isinstance(config.get("own_data"), dict):
        return config
    config = copy.deepcopy(config)
    for name, preset in presets.items():
        if isinstance(preset, dict) and "dataset" in preset:
            config["presets"][name] = _merge(config["own_data"], preset)
    return config


# The data options of an own-data preset that its prepare step takes (the others name the source:
# flyp.datasets.owndata.OwnData).
OWN_DATA_PREPARE = ("seed", "val_size", "val_fraction")


def own_data_spec(run: dict, source: str = "params.yaml") -> str | None:
    """The benchmark spec of an own-data preset (``dataset: imagefolder | csv``) as the steps'
    ``--benchmark`` takes it (JSON, flyp.datasets.owndata); None for a registered benchmark."""
    if "dataset" not in run:
        return None
    data = run["data"]
    key = "root" if run["dataset"] == "imagefolder" else "csv"
    spec = {"dataset": run["dataset"], "name": run["benchmark"], key: data[key]}
    spec.update({k: data[k] for k in ("classnames", "templates", "metric") if k in data})
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def load_params(config: dict, schema_path: str | Path, source: str = "params.yaml") -> dict:
    """Validate the raw params (as Snakemake loaded them) and return the resolved run settings."""
    schema = read_yaml(schema_path)
    params = validate(with_own_data_defaults(config), schema, source)
    run = resolve(params, source)
    run["benchmark_spec"] = own_data_spec(run, source)
    check_names(run, source)
    check_method_options(run, source)
    check_sweep(run, source)
    return run
