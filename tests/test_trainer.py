"""The trainer drives a toy method that exercises every hook of the protocol, in the right order."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

from quantlab.engine.evaluate import evaluate
from quantlab.engine.settings import TrainerSettings
from quantlab.engine.trainer import Trainer
from quantlab.errors import ConfigError
from quantlab.runs.config import compose
from quantlab.runs.runlog import RunLog
from tests.toy_method import ToyMethod

OVERRIDES = ["schedule.epochs=2", "dataset.val_size=60", "trainer.log_every=5"]


def make(tmp_path, method, *extra):
    cfg = compose([*OVERRIDES, *extra])
    torch.manual_seed(0)
    runlog = RunLog(tmp_path)
    trainer = Trainer(
        instantiate(cfg.model),
        method,
        instantiate(cfg.dataset),
        TrainerSettings.from_config(cfg),
        tmp_path,
        runlog,
    )
    return trainer, runlog


def test_hooks_called_in_order(tmp_path):
    method = ToyMethod()
    trainer, runlog = make(tmp_path, method)
    assert method.calls == ["prepare", "optimizer"]
    assert "toy_scale" in method.param_names  # the optimizer sees what prepare added
    trainer.fit()
    n = trainer.total_steps
    assert n == 2 * trainer.steps_per_epoch
    assert method.calls.count("penalty") == n and method.calls.count("on_step") == n
    assert [s for s, _ in method.steps_seen] == list(range(n))  # step counts steps before it
    assert {e for _, e in method.steps_seen} == {0, 1}
    steps = [c for c in method.calls if c in ("penalty", "on_step")]
    assert steps == ["penalty", "on_step"] * n  # penalty before the step, on_step after it
    assert method.calls.count("export") == 2  # validation of the export after each epoch
    result = trainer.test()
    metrics, exported = result.metrics, result.exported
    runlog.close()
    assert method.calls[-1] == "export"
    # test/acc_exported is the accuracy of exactly what export() returned.
    assert metrics["test/acc_exported"] == pytest.approx(evaluate(exported, trainer.test_loader)["acc"])
    assert metrics["test/acc"] == pytest.approx(evaluate(trainer.model, trainer.test_loader)["acc"])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {k for line in lines for k in line}
    assert {
        "method/l2",
        "method/counter",
        "train/loss",
        "train/acc",
        "val/acc",
        "val/acc_exported",
        "lr",
    } <= logged
    assert max(line.get("method/counter", 0) for line in lines) == n
    assert (tmp_path / "exported.pt").exists() and (tmp_path / "checkpoints" / "best.pt").exists()


def test_penalty_enters_the_loss(tmp_path):
    norms = {}
    for weight in (0.0, 0.05):
        trainer, runlog = make(tmp_path / str(weight), ToyMethod(weight=weight))
        trainer.fit()
        runlog.close()
        norms[weight] = sum(
            float((p.detach() ** 2).sum()) for n, p in trainer.model.named_parameters() if p.ndim > 1
        )
    assert norms[0.05] < 0.8 * norms[0.0]


def test_method_state_saved_and_restored(tmp_path):
    method = ToyMethod()
    trainer, runlog = make(tmp_path, method)
    trainer.fit()
    runlog.close()
    fresh = ToyMethod()
    other, runlog2 = make(tmp_path / "again", fresh)
    other.load(tmp_path / "checkpoints" / "last.pt")
    runlog2.close()
    assert fresh.counter == method.counter == trainer.total_steps
    assert other.clock == trainer.clock
    for a, b in zip(other.model.parameters(), trainer.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_iterations_budget_and_lr_schedule(tmp_path):
    trainer, runlog = make(
        tmp_path,
        ToyMethod(lr=0.1),
        "schedule=md_cifar",
        "schedule.batch_size=64",
        "schedule.iterations=25",
        "schedule.lr.scale=0.5",
        "schedule.lr.interval=10",
    )
    trainer.fit()
    runlog.close()
    assert trainer.clock.step == 25 and trainer.epochs == 2
    # step 24: two halvings, and the one md_cifar takes at iteration 0 (the public MD code's count_zero)
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


def test_model_selection_uses_validation(tmp_path):
    method = ToyMethod()
    trainer, runlog = make(tmp_path, method, "trainer.select_by=val/acc")
    trainer.fit()
    runlog.close()
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["step"] == trainer.best["step"]
    assert best["metrics"]["val/acc"] == trainer.best["metric"]


def test_amp_and_grad_clip_paths(tmp_path):
    """bf16 autocast on CPU and gradient clipping run, and training still learns."""
    trainer, runlog = make(tmp_path, ToyMethod(lr=0.05), "trainer.amp=true", "trainer.grad_clip=1.0")
    assert trainer.amp_dtype == torch.bfloat16
    trainer.fit()
    metrics = trainer.test().metrics
    runlog.close()
    assert metrics["test/acc"] > 30 and trainer.last_logged["train/loss"] < 2.3


def test_device_errors():
    from quantlab.engine.evaluate import resolve_device

    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda"):
            resolve_device("cuda")
