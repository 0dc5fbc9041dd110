"""Every option of every config group composes and instantiates (one parametrized test over conf/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from quantlab.errors import ConfigError
from quantlab.methods.base import Method
from quantlab.quant.pairs import parse_sweep
from quantlab.runs.config import compose, validate_train_config
from tests.fakedata import FACTS, WRITERS

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ["dataset", "model", "method", "bitwidth", "schedule", "experiment"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_every_group_has_options():
    for group in GROUPS:
        assert list((CONF / group).glob("*.yaml")), group


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "experiment":
        overrides.append(f"method={experiment_methods(option)[0]}")
    if group == "method" and option != "float":
        overrides.append("bitwidth=binary")  # every weight-quantization method supports binary
    if group == "dataset" and option in WRITERS:
        WRITERS[option](tmp_path)
        overrides += [f"dataset.root={tmp_path}", "dataset.val_size=6", *FACTS.get(option, [])]
        if "verify" in compose(overrides).dataset:
            overrides.append("dataset.verify=false")
    if group == "dataset" and option == "glyphs":  # generated: a small one, cached in the test's directory
        overrides += [f"dataset.root={tmp_path}", "dataset.num_train=200", "dataset.num_test=100"]
        overrides.append("dataset.val_size=20")
    cfg = compose(overrides)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if group == "experiment":
        check_experiment(option)
        return
    validate_train_config(cfg)
    if group == "dataset":
        bundle = instantiate(cfg.dataset)
        assert bundle.num_classes == cfg.dataset.num_classes
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
    ("slurm_ddp", "hydra_plugins.hydra_submitit_launcher"),
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
    if option == "slurm_ddp":  # one task (rank) per GPU; the launcher builds (it cannot submit here)
        from hydra.utils import instantiate

        assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4
        assert type(instantiate(cfg.hydra.launcher)).__name__ == "SlurmLauncher"


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


def experiment_methods(option: str) -> list[str]:
    """The methods a preset has rows for (paper presets), else the method it selects or float."""
    cfg = compose([f"experiment={option}", "method=float"])
    rows = OmegaConf.select(cfg, "preset.rows", default=None)
    if rows is not None:
        return list(rows)
    return ["md_tanh_s", "float"] if option == "digits_md" else ["float"]


def check_experiment(option: str) -> None:
    """Every row of a preset composes, resolves, and builds its method, model and optimizer."""
    for method in experiment_methods(option):
        cfg = compose([f"experiment={option}", f"method={method}"])
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        row = OmegaConf.select(resolved, "preset.row", default=None)
        if row is not None and "lr" in row:
            assert resolved.schedule.optimizer.lr == row.lr
            if "beta_scale" in row:
                assert resolved.schedule.beta.scale == row.beta_scale
            if "reg_rate" in row:
                assert resolved.method.reg_rate == row.reg_rate
        validate_train_config(resolved)
        instantiate(resolved.method)
        model = instantiate(resolved.model)
        opt = Method().optimizer(model, resolved.schedule)
        assert opt.param_groups[0]["lr"] == resolved.schedule.optimizer.lr
        for key in ("lr", "beta", "lam"):
            assert isinstance(instantiate(resolved.schedule[key])(0, 0), float)


def test_gradient_l1_presets_cover_tables_1_and_2():
    from quantlab.runs.config import check_missing

    for name, sweep in [
        ("gl1_t1_cifar10_vgg_small", [[8, 4], [6, 4], [4, 4]]),
        ("gl1_t1_cifar10_resnet18", [[8, 4], [6, 4], [4, 4]]),
        ("gl1_t2_imagenet_resnet18", [[8, 8], [6, 6], [4, 4]]),
    ]:
        assert experiment_methods(name) == ["float", "dq", "grad_l2", "grad_l1", "ste"]
        cfg = compose([f"experiment={name}", "method=grad_l1"])
        assert cfg.bitwidth.sweep == sweep and cfg.method.last_epochs == 15
        ste = compose([f"experiment={name}", "method=ste", "bitwidth=w6a4"])
        with pytest.raises(ConfigError, match="init_from"):
            check_missing(ste)
        assert compose([f"experiment={name}", "method=dq"]).schedule.optimizer.weight_decay == 0.0


def test_paper_presets_cover_the_tables():
    names = {p.stem for p in (CONF / "experiment").glob("md_t*.yaml")}
    for ds_model in (
        "cifar10_vgg16",
        "cifar10_resnet18",
        "cifar100_vgg16",
        "cifar100_resnet18",
        "tinyimagenet_resnet18",
    ):
        assert f"md_t1_{ds_model}" in names and f"md_t5_{ds_model}" in names
    assert {
        "md_t2_cifar10_mobilenetv2",
        "md_t2_cifar100_mobilenetv2",
        "md_t3_imagenet_resnet18",
        "md_t3_imagenet_resnet18_finetune",
    } <= names
    table8 = compose(["experiment=md_t1_cifar100_vgg16", "method=md_softmax_s"])
    assert table8.schedule.optimizer.lr == 0.0001 and table8.schedule.beta.interval == 500  # Table 8 cell
    table9 = compose(["experiment=md_t5_cifar10_vgg16", "method=pq"])
    assert table9.method.reg_rate == 1e-7 and table9.bitwidth.name == "ternary"  # Table 9 cell
    ref = compose(["experiment=md_t5_cifar10_resnet18", "method=float"])
    assert ref.schedule.optimizer.name == "sgd" and ref.model.bn_affine is True
    assert compose(["experiment=md_t1_cifar10_resnet18", "method=bc"]).model.bn_affine is False
