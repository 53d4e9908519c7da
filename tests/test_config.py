"""params.yaml: validation with one-line errors, number coercion, preset resolution."""

import copy
import re

import pytest
import yaml

from flyp.io import UserError
from flyp.workflow.config import load_params, training_settings
from tests.conftest import ROOT

SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture()
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_resolve_to_the_embedded_preset(params):
    run = load_params(params, SCHEMA)
    assert run["benchmark"] == "embedded"
    assert run["finetune"]["lr"] == params["presets"]["embedded"]["finetune"]["lr"]
    assert {"zeroshot", "ft", "flyp", "lp", "lpft", "l2sp"} <= set(run["methods"])
    assert run["seeds"] == params["seeds"]


def test_dvc_style_string_numbers_are_coerced(params):
    # `dvc exp run -S lr=1e-5` writes `lr: 1e-05`, which YAML 1.1 reads as a string.
    params["lr"] = yaml.safe_load("lr: 1e-05")["lr"]
    assert isinstance(params["lr"], str)
    params["epochs"] = "3"
    run = load_params(params, SCHEMA)
    assert run["top_level"]["lr"] == pytest.approx(1e-5)
    assert run["top_level"]["epochs"] == 3 and isinstance(run["top_level"]["epochs"], int)


def test_top_level_keys_override_preset_and_scale(params):
    params["scale"] = "smoke"
    params["epochs"] = 7
    run = load_params(params, SCHEMA)
    settings = training_settings(run, "ft", seed=0, classes=12)
    assert settings["epochs"] == 7  # top level wins over the smoke scale
    assert run["finetune"]["epochs"] == params["scales"]["smoke"]["finetune"]["epochs"]
    assert run["data"]["train_size"] == params["scales"]["smoke"]["data"]["train_size"]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"lr": "fast"}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"epochs": -2}, "epochs"),
        ({"methods": ["ft", "nonsense"]}, "unknown method 'nonsense'"),
        ({"benchmark": "imagenet21k"}, "benchmark"),
        ({"scale": "huge"}, "unknown scale 'huge'"),
        ({"runtime": {"threads": "many"}}, "runtime.threads"),
        ({"typo_key": 1}, "typo_key"),
    ],
)
def test_bad_params_give_one_line_error_naming_the_key(params, change, expected):
    bad = copy.deepcopy(params)
    bad.update(change)
    with pytest.raises(UserError) as err:
        load_params(bad, SCHEMA)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("params.yaml: ")
    assert expected in message


def test_nested_preset_value_of_wrong_type_is_named(params):
    params["presets"]["embedded"]["finetune"]["batch_size"] = 0
    with pytest.raises(UserError, match=r"presets\.embedded\.finetune\.batch_size"):
        load_params(params, SCHEMA)


REAL_PRESETS = ["imagenet", "iwildcam", "fmow", "caltech101", "cars", "flowers102", "sst2", "pcam"]
# locuslab/FLYP (src/models/flyp_loss.py): torch.optim.AdamW(all params, weight_decay=wd), no
# logit_scale clamp, no gradient clipping, fp32 (the OpenAI weights are cast to float).
REFERENCE = {"decay": "all", "clamp_logit_scale": False, "grad_clip": 0, "precision": "fp32"}
OPEN_CLIP_STYLE = {
    "decay": "matrices",
    "clamp_logit_scale": True,
    "grad_clip": 1.0,
    "precision": "fp32",
}


@pytest.mark.parametrize("scale", ["full", "smoke"])
@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_real_presets_optimise_as_the_reference(params, preset, scale):
    run = load_params({**params, "benchmark": preset, "scale": scale}, SCHEMA)
    assert {k: run["finetune"][k] for k in REFERENCE} == REFERENCE
    for method in ("ft", "lpft", "l2sp"):  # WiSE-FT's finetune.py clips gradients at norm 1.0
        assert run["method_options"][method]["grad_clip"] == 1.0


@pytest.mark.parametrize("scale", ["full", "smoke"])
def test_embedded_preset_keeps_open_clip_style_optimisation(params, scale):
    run = load_params({**params, "scale": scale}, SCHEMA)  # a scale never resets a switch
    assert {k: run["finetune"][k] for k in OPEN_CLIP_STYLE} == OPEN_CLIP_STYLE
    assert run["pretrain"]["decay"] == "matrices" and run["pretrain"]["clamp_logit_scale"]


@pytest.mark.parametrize("scale", ["full", "smoke"])
@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_real_presets_train_in_fp32_unless_runtime_asks_for_tf32(params, preset, scale):
    run = load_params({**params, "benchmark": preset, "scale": scale}, SCHEMA)
    assert run["runtime"]["tf32"] is False  # the reference trains in fp32
    params["runtime"]["tf32"] = True  # a user's choice, for every preset
    assert load_params({**params, "benchmark": preset}, SCHEMA)["runtime"]["tf32"] is True


def test_the_embedded_preset_keeps_tf32_unless_runtime_turns_it_off(params):
    assert params["runtime"]["tf32"] is None  # the preset's
    assert load_params(params, SCHEMA)["runtime"]["tf32"] is True
    params["runtime"]["tf32"] = False
    assert load_params(params, SCHEMA)["runtime"]["tf32"] is False
    del params["presets"]["embedded"]["tf32"]  # a preset that says nothing: fp32
    params["runtime"]["tf32"] = None
    assert load_params(params, SCHEMA)["runtime"]["tf32"] is False


@pytest.mark.parametrize(
    ("given", "expected"), [("true", True), ("False", False), ("null", True), ("3", "error")]
)
def test_snakemake_config_strings_become_booleans_and_null(params, given, expected):
    """``--config runtime="{tf32: true}"``: Snakemake reads nested values as strings."""
    params["runtime"] = {"tf32": given, "sync_bn": "false"}
    if expected == "error":
        with pytest.raises(UserError, match=r"^params.yaml: runtime.tf32: '3' is not of type"):
            load_params(params, SCHEMA)
        return
    run = load_params(params, SCHEMA)
    assert run["runtime"]["tf32"] is expected  # null: the embedded preset's (true)
    assert run["runtime"]["sync_bn"] is False


@pytest.mark.parametrize(
    "where, value",
    [
        (("finetune", "decay"), "biases"),
        (("finetune", "clamp_logit_scale"), "sometimes"),
        (("method_options", "ft", "decay"), "none"),
        (("method_options", "ft", "grad_clip"), -1),
    ],
)
def test_bad_optimisation_switch_is_named(params, where, value):
    node = params["presets"]["embedded"]
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = value
    with pytest.raises(UserError, match=r"presets\.embedded\." + r"\.".join(where)):
        load_params(params, SCHEMA)


def test_few_shot_protocol_is_per_preset(params):
    run = load_params(params, SCHEMA)
    assert run["fewshot"]["shots"] == [4, 16] and run["fewshot"]["draws"] == 3  # the main job
    sst2 = load_params({**params, "benchmark": "sst2"}, SCHEMA)["fewshot"]
    assert sst2["shots"] == [4, 16, 32] and sst2["draws"] == 50  # the paper's protocol
    assert sst2["finetune"]["lr"] == pytest.approx(1e-5) and sst2["finetune"]["wd"] == 0.2
    pcam = load_params({**params, "benchmark": "pcam"}, SCHEMA)["fewshot"]
    assert pcam["finetune"]["lr"] == pytest.approx(1e-6) and pcam["draws"] == 50
    for name in ["imagenet", "iwildcam", "fmow", "caltech101", "cars", "flowers102"]:
        assert "fewshot" not in params["presets"][name]
        none = load_params({**params, "benchmark": name}, SCHEMA)["fewshot"]
        assert none["shots"] == [] and none["draws"] == 0 and none["methods"] == []


def test_few_shot_switches_keep_the_embedded_preset_and_follow_the_reference_for_sst2_pcam(
    params,
):
    """The embedded preset (and a preset without few-shot runs) keeps the defaults: the earlier
    epoch on a val-loss tie, augmentation every epoch, the sample std over draws; SST2 and PCam
    follow the FLYP reference's few-shot code: the later epoch, one transformed batch, np.std."""
    from flyp.workflow.config import fewshot_protocol

    ours = {"val_loss_tie": "earlier", "augmentation": "per_epoch", "std_ddof": 1}
    reference = {"val_loss_tie": "later", "augmentation": "once", "std_ddof": 0}
    for name, expected in [("embedded", ours), ("caltech101", ours)] + [
        (name, reference) for name in ("sst2", "pcam")
    ]:
        run = load_params({**params, "benchmark": name}, SCHEMA)
        assert {k: run["fewshot"][k] for k in expected} == expected, name
        changed = {} if expected is ours else {"val_loss_tie": "later", "augmentation": "once"}
        assert fewshot_protocol(run) == changed, name
    smoke = load_params({**params, "scale": "smoke"}, SCHEMA)  # a scale resets no switch
    assert {k: smoke["fewshot"][k] for k in ours} == ours


@pytest.mark.parametrize(
    "key, value", [("val_loss_tie", "first"), ("augmentation", "never"), ("std_ddof", 2)]
)
def test_a_bad_few_shot_switch_is_named(params, key, value):
    params["presets"]["sst2"]["fewshot"][key] = value
    with pytest.raises(UserError, match=rf"^params\.yaml: presets\.sst2\.fewshot\.{key}: "):
        load_params({**params, "benchmark": "sst2"}, SCHEMA)


def test_few_shot_settings_are_not_top_level(params):
    with pytest.raises(UserError, match="fewshot"):
        load_params({**params, "fewshot": {"shots": [4], "draws": 2}}, SCHEMA)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"draws": [0, 1, 2]}, r"presets\.embedded\.fewshot\.draws"),  # a count, not a list
        ({"draws": -1}, r"presets\.embedded\.fewshot\.draws"),
        ({"methods": ["nonsense"]}, r"presets\.embedded\.fewshot\.methods: unknown method"),
    ],
)
def test_bad_few_shot_settings_name_the_preset(params, change, expected):
    params["presets"]["embedded"]["fewshot"].update(change)
    with pytest.raises(UserError, match=expected):
        load_params(params, SCHEMA)


def _set(params: dict, dotted: str, value) -> None:
    *parents, key = dotted.split(".")
    for name in parents:
        params = params.setdefault(name, {})
    params[key] = value


# One row per layer of training_settings' order, on the embedded preset (lr 1e-4 in its finetune
# block, LP-FT's lr_scale 0.1) and on ImageNet (lr 1e-5, FT's method_options lr 3e-5, LP-FT's
# lr 1e-5): (preset, params.yaml changes, method, the run (few-shot k, sweep point), the lr it
# trains at). Each layer wins over the ones before it; lr_scale multiplies whatever lr results.
EMB, IMN = "presets.embedded", "presets.imagenet"
LAYERS = {
    "preset": ("embedded", {}, "ft", {}, 1e-4),
    "preset, imagenet": ("imagenet", {}, "flyp", {}, 1e-5),
    "scale over preset": ("embedded", {"scales.full.finetune.lr": 5e-4}, "ft", {}, 5e-4),
    "method_options over scale": (
        "embedded",
        {"scales.full.finetune.lr": 5e-4, f"{EMB}.method_options.ft.lr": 2e-4},
        "ft",
        {},
        2e-4,
    ),
    "method_options, imagenet": ("imagenet", {}, "ft", {}, 3e-5),
    "few-shot over method_options": (
        "embedded",
        {f"{EMB}.method_options.ft.lr": 2e-4, f"{EMB}.fewshot.finetune.lr": 7e-4},
        "ft",
        {"shots": 4},
        7e-4,
    ),
    "sweep point over method_options": (
        "embedded",
        {f"{EMB}.method_options.ft.lr": 2e-4},
        "ft",
        {"point": {"lr": 9e-4}},
        9e-4,
    ),
    "top level over all, embedded": (
        "embedded",
        {"lr": 1e-6, f"{EMB}.method_options.ft.lr": 2e-4, f"{EMB}.fewshot.finetune.lr": 7e-4},
        "ft",
        {"shots": 4},
        1e-6,
    ),
    "top level over method_options, imagenet": ("imagenet", {"lr": 1e-6}, "ft", {}, 1e-6),
    "top level, imagenet's LP-FT (no lr_scale)": ("imagenet", {"lr": 1e-6}, "lpft", {}, 1e-6),
    "lr_scale x the preset's": ("embedded", {}, "lpft", {}, 1e-5),
    "lr_scale x a sweep point's": ("embedded", {}, "lpft", {"point": {"lr": 1e-2}}, 1e-3),
    "lr_scale x the top level's": ("embedded", {"lr": 1e-6}, "lpft", {}, 1e-7),
    "lr_scale on imagenet": (
        "imagenet",
        {"lr": 1e-6, f"{IMN}.method_options.lpft": {"lr_scale": 0.5}},
        "lpft",
        {},
        5e-7,
    ),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_layer_of_the_settings_wins_over_the_ones_before(params, layer):
    benchmark, changes, method, run, lr = LAYERS[layer]
    params["benchmark"] = benchmark
    for dotted, value in changes.items():
        _set(params, dotted, value)
    resolved = load_params(params, SCHEMA)
    settings = training_settings(resolved, method, seed=3, classes=12, **run)
    assert settings["lr"] == pytest.approx(lr, rel=1e-12)
    assert settings["seed"] == 3


def test_a_few_shot_run_without_a_batch_size_takes_its_whole_k_shot_set(params):
    run = load_params(params, SCHEMA)
    assert run["fewshot"]["finetune"]["batch_size"] is None
    assert training_settings(run, "flyp", seed=0, classes=12, shots=4)["batch_size"] == 48
    params["batch_size"] = 32  # the top level wins there too
    run = load_params(params, SCHEMA)
    assert training_settings(run, "flyp", seed=0, classes=12, shots=4)["batch_size"] == 32


def test_a_scaled_lr_is_the_lr_a_user_means():
    """1e-4 x 0.1 is 1e-05 (12 significant digits), not 1.0000000000000002e-05."""
    run = {
        "finetune": {"lr": 1e-4},
        "method_options": {"lpft": {"lr_scale": 0.1}},
        "fewshot": {"finetune": {}},
        "top_level": {},
    }
    assert training_settings(run, "lpft", seed=0, classes=2)["lr"] == 1e-05


# WiSE-FT's grid (mlfoundations/wise-ft: its code and README), which the paper's "+ weight
# ensembling" rows come from; the embedded preset's main job evaluates 5 alphas.
WISE_FT_ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
MAIN_JOB_ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
# (preset, the top-level alphas (None: not set), the alphas the run evaluates)
ALPHA_GRIDS = [
    *[(name, None, WISE_FT_ALPHAS) for name in REAL_PRESETS],
    ("embedded", None, MAIN_JOB_ALPHAS),
    ("imagenet", [1.0, 0.0, 0.5], [0.0, 0.5, 1.0]),  # the top level wins, sorted
    ("embedded", [0.0, 0.5, 1.0], [0.0, 0.5, 1.0]),
    ("embedded", ["0", "0.3", "1"], [0.0, 0.3, 1.0]),  # as `dvc exp run -S` may write them
]


@pytest.mark.parametrize("preset, top_level, expected", ALPHA_GRIDS)
def test_the_alpha_grid_is_the_presets_unless_the_top_level_sets_one(
    params, preset, top_level, expected
):
    params.update(benchmark=preset, alphas=top_level)
    assert load_params(params, SCHEMA)["alphas"] == expected


def test_a_preset_without_an_alpha_grid_takes_wise_fts():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    del params["presets"]["imagenet"]["alphas"]
    assert load_params({**params, "benchmark": "imagenet"}, SCHEMA)["alphas"] == WISE_FT_ALPHAS


@pytest.mark.parametrize(
    "where, grid, expected",
    [
        ("alphas", [0.5, 1.0], r"^params\.yaml: alphas: must include 0 \(zero-shot\)"),
        ("alphas", [0.0, 1.5], r"^params\.yaml: alphas\.1: "),
        ("presets.imagenet.alphas", [0.0, 0.5], r"^params\.yaml: presets\.imagenet\.alphas: must"),
        ("presets.imagenet.alphas", [], r"^params\.yaml: presets\.imagenet\.alphas: "),
        ("scales.full.alphas", [0.1, 1.0], r"^params\.yaml: scales\.full\.alphas: must"),
    ],
)
def test_a_bad_alpha_grid_is_one_line_naming_its_key(params, where, grid, expected):
    params["benchmark"] = "imagenet"
    _set(params, where, grid)
    with pytest.raises(UserError, match=expected) as err:
        load_params(params, SCHEMA)
    assert "\n" not in str(err.value)


def test_the_imagenet_dry_run_evaluates_wise_fts_grid_unless_the_top_level_sets_one(tmp_path):
    from tests.test_fewshot_presets import dry_run
    from tests.test_imagenet import workflow_copy

    work = workflow_copy(tmp_path)
    for args, grid in [((), WISE_FT_ALPHAS), (("alphas=[0,0.5,1]",), [0.0, 0.5, 1.0])]:
        out = dry_run(work, "imagenet", *args, "--printshellcmds")  # args: more --config items
        found = set(re.findall(r"--alphas (\S+)", out))
        assert found == {",".join(str(a) for a in grid)}, args


def test_last_epoch_selection_keeps_imagenets_val_in_train_and_no_other_benchmarks():
    from types import SimpleNamespace

    from flyp.datasets import get_benchmark
    from flyp.workflow.config import prepare_options

    imagenet, embedded = get_benchmark("imagenet"), get_benchmark("embedded")
    run = {"data": {"seed": 0, "val_size": 10000, "imagenet_train": "/x"}, "selection": "heldout"}
    assert prepare_options(run, imagenet) == {"seed": 0, "val_size": 10000}  # no archive source
    last = {**run, "selection": "last_epoch"}
    assert prepare_options(last, imagenet) == {"seed": 0, "val_size": 10000, "val_in_train": True}
    own = {**last, "data": {"val_in_train": False}}  # a preset's own value wins
    assert prepare_options(own, imagenet) == {"val_in_train": False}
    assert prepare_options({"data": {"seed": 0}, "selection": "last_epoch"}, embedded) == {
        "seed": 0
    }
    assert prepare_options({"data": {}}, SimpleNamespace(downloads=[], prepare=len)) == {}


@pytest.mark.parametrize(
    ("given", "expected"), [(None, "auto"), ("auto", "auto"), ("true", True), ("false", False)]
)
def test_grad_checkpointing_is_auto_unless_runtime_says_true_or_false(params, given, expected):
    """auto: each GPU job decides from its memory plan (flyp.memplan); ``--config
    runtime="{grad_checkpointing: true}"`` reads as a string, coerced."""
    params["runtime"].pop("grad_checkpointing", None)
    if given is not None:
        params["runtime"]["grad_checkpointing"] = given
    assert load_params(params, SCHEMA)["runtime"]["grad_checkpointing"] == expected
    params["runtime"]["grad_checkpointing"] = "sometimes"
    with pytest.raises(UserError, match=r"^params.yaml: runtime.grad_checkpointing: "):
        load_params(params, SCHEMA)
