"""One source of truth for every setting (issue 27): conf/ holds every default; no Python signature
or settings class restates one; every key a config sets is a parameter something reads; an old run's
config gets the settings added since it ran, as it ran."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

from tests.conftest import REPO

BUILT = ("quantlab.methods.", "quantlab.data.", "quantlab.models.")


def _target_nodes():
    for path in sorted((REPO / "conf").rglob("*.yaml")):
        stack = [yaml.safe_load(path.read_text())]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                if str(node.get("_target_", "")).startswith(BUILT):
                    yield path.relative_to(REPO), node
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)


def _parameter(obj, key: str) -> inspect.Parameter | None:
    """The parameter `key` of a function, or of a class's __init__ chain (through **kwargs)."""
    chain = (
        [c.__init__ for c in inspect.getmro(obj) if "__init__" in vars(c)] if inspect.isclass(obj) else [obj]
    )
    for fn in chain:
        params = inspect.signature(fn).parameters
        if key in params:
            return params[key]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
    return None


def _composed_methods():
    """Every method option composed (its shared settings included), as its own YAML node."""
    from omegaconf import OmegaConf

    from quantlab.runs.config import compose, group_options

    for name in group_options("method"):
        yield f"method={name}", OmegaConf.to_container(compose([f"method={name}"]).method, resolve=False)


def test_no_python_default_restates_a_yaml_setting():
    restated, unread = [], []
    for path, node in [*_target_nodes(), *_composed_methods()]:
        obj = get_object(node["_target_"])
        for key in node:
            if key.startswith("_") or key == "defaults":  # Hydra's own keys
                continue
            param = _parameter(obj, key)
            if param is None:
                unread.append(f"{path}: {key}")
            elif param.default is not inspect.Parameter.empty:
                restated.append(f"{path}: {key} (Python: {param.default!r}, YAML: {node[key]!r})")
    assert not restated, "\n".join(restated)
    assert not unread, "\n".join(unread)


def test_dataset_builders_take_no_unknown_keys():
    for _, node in _target_nodes():
        obj = get_object(node["_target_"])
        if node["_target_"].startswith("quantlab.data."):
            kinds = {p.kind for p in inspect.signature(obj).parameters.values()}
            assert inspect.Parameter.VAR_KEYWORD not in kinds, node["_target_"]


@pytest.mark.parametrize(
    "settings", ["quantlab.engine.settings.TrainerSettings", "quantlab.quant.sweep.PTQSettings"]
)
def test_settings_classes_have_no_defaults(settings):
    cls = get_object(settings)
    with_default = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]
    assert with_default == []


def test_an_old_run_config_gets_the_settings_added_since(tmp_path):
    """A run recorded before dataset.loader, val_split, select_ties, ptq.bias existed: its config
    builds, with the values it ran with (torchvision loading, random validation, loss ties, float bias)."""
    from omegaconf import OmegaConf

    from quantlab.runs.config import compose, with_legacy_settings

    cfg = OmegaConf.create(OmegaConf.to_container(compose(["dataset=cifar10"]), resolve=False))
    for key in ("loader", "val_split", "val_augment"):
        del cfg.dataset[key]
    del cfg.trainer["select_ties"]
    del cfg.ptq["bias"]
    old = with_legacy_settings(cfg)
    assert old.dataset.loader == "torchvision" and old.dataset.val_split == "random"
    assert old.dataset.val_augment is False and old.trainer.select_ties == "loss" and old.ptq.bias == "float"
    new = with_legacy_settings(compose(["dataset=cifar10"]))  # a new run's config: nothing changes
    assert new.dataset.loader == "auto"


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0: must be an integer > 0"),
        ("+schedule.foo=1", "schedule.foo: no such setting"),
        ("+trainer.bar=2", "trainer.bar: no such setting"),
        ("+dataset.foo=1", "dataset.foo"),
    ],
)
def test_a_value_nothing_checks_or_reads_is_refused_before_anything_is_created(workdir, override, says):
    from tests.conftest import quantlab

    proc = quantlab("train", override, cwd=workdir, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], proc.stderr
    assert list(Path(workdir).iterdir()) == []
