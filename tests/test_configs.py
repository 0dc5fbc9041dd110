"""Every option of every config group composes and instantiates (one parametrized test over conf/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from quantlab.config import ConfigError, compose, parse_sweep, validate_train_config
from quantlab.methods.base import Method
from tests.fakedata import WRITERS

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["dataset", "model", "method", "bitwidth", "schedule", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    for group in GROUPS:
        assert list((CONF / group).glob("*.yaml")), group


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "dataset" and option in WRITERS:
        WRITERS[option](tmp_path)
        overrides += [f"dataset.root={tmp_path}", "dataset.val_size=6"]
        if "verify" in compose(overrides).dataset:
            overrides.append("dataset.verify=false")
    cfg = compose(overrides)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "experiment":
        # Presets point at datasets on disk; check the parts that need no files.
        instantiate(cfg.method)
        assert isinstance(instantiate(cfg.model), torch.nn.Module)
        return
    validate_train_config(cfg)
    if group == "dataset":
        bundle = instantiate(cfg.dataset)
        assert bundle.num_classes == cfg.dataset.num_classes or option in ("tinyimagenet", "imagenet")
        assert bundle.in_channels == cfg.dataset.in_channels and bundle.image_size == cfg.dataset.image_size
    elif group == "model":
        model = instantiate(cfg.model)
        x = torch.randn(2, cfg.dataset.in_channels, cfg.dataset.image_size, cfg.dataset.image_size)
        assert model(x).shape == (2, cfg.dataset.num_classes)
    elif group == "method":
        assert isinstance(instantiate(cfg.method), Method)
    elif group == "bitwidth":
        parse_sweep(cfg.bitwidth.sweep)
        assert {"weight_bits", "act_bits", "levels", "sweep"} <= set(cfg.bitwidth)
    elif group == "schedule":
        model = torch.nn.Linear(3, 2)
        method = Method()
        opt = method.optimizer(model, cfg.schedule)
        assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] > 0
        for key in ("lr", "beta", "lam"):
            value = instantiate(cfg.schedule[key])(0, 0)
            assert isinstance(value, float)


LAUNCHERS = [
    ("local", "hydra_plugins.hydra_joblib_launcher"),
    ("slurm", "hydra_plugins.hydra_submitit_launcher"),
]


@pytest.mark.parametrize(("option", "plugin"), LAUNCHERS)
def test_launcher_presets(option, plugin):
    try:
        found = importlib.util.find_spec(plugin) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        pytest.skip(f"optional extra not installed ({plugin})")
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = hcompose("train", [f"hydra/launcher={option}"], return_hydra_config=True)
    assert "Launcher" in cfg.hydra.launcher._target_


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("schedule.epochs=0", "schedule.epochs"),
        ("schedule.epochs=-3", "schedule.epochs"),
        ("schedule.iterations=0", "schedule.iterations"),
        ("schedule.optimizer.lr=0", "schedule.optimizer.lr"),
        ("schedule.optimizer.lr=-0.1", "schedule.optimizer.lr"),
        ("schedule.batch_size=0", "schedule.batch_size"),
        ("bitwidth.weight_bits=33", "bitwidth.weight_bits"),
        ("bitwidth.act_bits=0", "bitwidth.act_bits"),
        ("bitwidth.sweep=[[8,40]]", "bitwidth.sweep[0][1]"),
        ("bitwidth.sweep=[[8]]", "bitwidth.sweep[0]"),
        ("device=tpu", "device"),
    ],
)
def test_out_of_range_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as info:
        validate_train_config(compose([override]))
    assert str(info.value).startswith(field) and "\n" not in str(info.value)
