"""The training settings are declared once (flyp/settings.py); what else names them says the same:
the params schema (each setting's values in ``$defs``, and the blocks that may set it), the
commands' options, ``TrainConfig``, the sweep's keys and the workflow's."""

from __future__ import annotations

import dataclasses

import click
import pytest
import yaml

from flyp.cli import main
from flyp.settings import (
    ARGUMENTS,
    AUGMENTATIONS,
    REQUIRED,
    SEED,
    STD_DDOFS,
    SWEEPABLE,
    TIES,
    TOP_LEVEL,
    TRAINING,
)
from flyp.training import TrainConfig
from flyp.workflow import config
from tests.conftest import ROOT

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())
DEFS = SCHEMA["$defs"]


def ref(name: str) -> dict:
    return {"$ref": f"#/$defs/{name}"}


@pytest.mark.parametrize("setting", TRAINING, ids=lambda s: s.name)
def test_the_schema_states_each_setting_as_declared(setting):
    assert DEFS[setting.name] == setting.schema()
    train = DEFS["train"]["properties"][setting.name]
    assert {k: v for k, v in train.items() if k != "default"} == ref(setting.name)
    default = train.get("default")
    assert default == setting.default or (setting.type is float and default == 0 == setting.default)
    assert DEFS["preset"]["properties"]["method_options"]["additionalProperties"]["properties"][
        setting.name
    ] == ref(setting.name)


def test_the_blocks_that_set_training_settings_name_only_declared_ones():
    train = set(DEFS["train"]["properties"]) - {"seed", "seeds"}
    assert train == {s.name for s in TRAINING}
    options = DEFS["preset"]["properties"]["method_options"]["additionalProperties"]["properties"]
    assert set(options) == {s.name for s in TRAINING} | {config.LR_SCALE}
    fewshot = DEFS["fewshot"]["properties"]["finetune"]["properties"]
    assert set(fewshot) <= {s.name for s in TRAINING}
    sweep = DEFS["preset"]["properties"]["sweep"]["additionalProperties"]["properties"]
    assert set(sweep) == set(SWEEPABLE)
    for name, grid in sweep.items():
        assert grid == {**ref("grid"), "items": ref(name)}
    top = {k for k, v in SCHEMA["properties"].items() if "oneOf" in v and ref(k) in v["oneOf"]}
    assert top == set(TOP_LEVEL)
    assert DEFS["train"]["properties"]["seed"]["default"] == SEED.default


def test_train_config_holds_every_setting_with_its_default():
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for setting in ARGUMENTS:
        assert setting.name in fields
        default = fields[setting.name].default
        if default is not dataclasses.MISSING:
            # grad_clip 0 (no clipping) is None in the config
            assert default == setting.default or (default is None and not setting.default)


def test_the_few_shot_switches_say_the_same_everywhere():
    """The few-shot protocol's switches (flyp.settings TIES, AUGMENTATIONS, STD_DDOFS): the
    schema's values and defaults (the first of each), the resolver's defaults, and the options of
    `flyp fewshot` / `flyp finetune` and `flyp report`."""
    declared = {"val_loss_tie": TIES, "augmentation": AUGMENTATIONS, "std_ddof": STD_DDOFS}
    schema = DEFS["fewshot"]["properties"]
    for key, values in declared.items():
        assert schema[key]["enum"] == list(values) and schema[key]["default"] == values[0], key
        assert config.FEWSHOT_SWITCHES[key] == values[0], key
    for command in ("finetune", "fewshot"):
        options = {p.name: p for p in main.commands[command].params}
        for key, values in [("val_loss_tie", TIES), ("augmentation", AUGMENTATIONS)]:
            assert list(options[key].type.choices) == list(values)
            assert options[key].default == values[0]
    ddof = next(p for p in main.commands["report"].params if p.name == "fewshot_std_ddof")
    assert list(ddof.type.choices) == [str(d) for d in STD_DDOFS] and ddof.default == "1"


@pytest.mark.parametrize("command", ["pretrain", "finetune", "fewshot"])
def test_the_commands_take_every_setting_typed_as_declared(command):
    params = {p.name: p for p in main.commands[command].params}
    flags = [p.opts[0] for p in main.commands[command].params if p.name in params]
    assert [f for f in flags if f in {s.flag for s in ARGUMENTS}] == [s.flag for s in ARGUMENTS]
    for setting in ARGUMENTS:
        option = params[setting.name]
        if setting.choices:
            assert isinstance(option.type, click.Choice)
            assert list(option.type.choices) == list(setting.choices)
        elif setting.type is bool:
            assert option.is_flag
        if setting.minimum is not None:
            assert option.type.min == setting.minimum
            assert option.type.min_open == setting.exclusive_minimum
        if setting.default is not None:
            assert option.default == setting.default
        # pretraining always trains; finetuning asks for them only for a method that trains
        assert option.required == (command == "pretrain" and setting.name in REQUIRED)


def test_the_workflow_and_the_sweep_use_the_declared_keys():
    from flyp import sweep

    assert config.TRAIN_KEYS == tuple(s.name for s in TRAINING)
    assert sweep.SWEEPABLE == SWEEPABLE == tuple(s.name for s in TRAINING if s.sweepable)
