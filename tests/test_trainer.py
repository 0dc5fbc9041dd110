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
    # md_cifar's lr is md-bnn's under torch 0.4: the factor of step t is 0.5^max(0, ⌊(t − 1)/10⌋)
    assert trainer.opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)  # step 24


def test_the_lr_and_beta_a_step_uses_are_the_schedules_values_at_that_step(tmp_path):
    """The contract md_cifar's presets rely on: iteration t trains with lr·schedule.lr(t) and with
    β = schedule.beta(t) (md-bnn: β₀ at iteration 0, β₀·scale from iteration 1)."""
    from quantlab.runs.components import build

    cfg = compose(
        [
            *OVERRIDES,
            "method=md_tanh_s",
            "schedule=md_cifar",
            "schedule.batch_size=64",
            "schedule.iterations=23",
            "schedule.lr.interval=10",
            "schedule.lr.scale=0.5",
            "schedule.beta.interval=4",
            "schedule.beta.scale=2",
        ]
    )
    torch.manual_seed(0)
    method = build(cfg.method, "method")
    trainer = Trainer(
        instantiate(cfg.model), method, instantiate(cfg.dataset), TrainerSettings.from_config(cfg), tmp_path
    )
    used = []
    step = trainer.train_step

    def recording(x, y):
        used.append((trainer.opt.param_groups[0]["initial_lr"], method.beta.value))
        out = step(x, y)
        used[-1] = (out.lr, used[-1][1])  # the lr the optimizer stepped with
        return out

    trainer.train_step = recording
    trainer.fit()
    lr0 = float(cfg.schedule.optimizer.lr)
    assert [lr for lr, _ in used] == pytest.approx([lr0 * 0.5 ** max(0, (t - 1) // 10) for t in range(23)])
    assert [b for _, b in used] == pytest.approx(
        [1.0 if t == 0 else 2.0 ** (1 + (t - 1) // 4) for t in range(23)]
    )


def _validated_steps(tmp_path, *extra):
    trainer, runlog = make(tmp_path, ToyMethod(), *extra)
    seen = []
    validate = trainer.validate

    def recording():
        seen.append((trainer.clock.epoch, trainer.clock.batch, trainer.clock.step))
        return validate()

    trainer.validate = recording
    trainer.fit()
    runlog.close()
    return trainer, seen


def md_bnn_eval_steps(per_epoch: int, every: int, epochs: int) -> list[int]:
    """The steps done when md-bnn evaluates: `for i, batch in enumerate(train_loader): train_step;
    if i % log_interval == 0: evaluate`, then once more at each epoch's end (the same weights
    evaluated twice in a row count once)."""
    steps, done = [], 0
    for _ in range(epochs):
        for i in range(per_epoch):
            done += 1
            if i % every == 0:
                steps.append(done)
        if steps[-1] != done:
            steps.append(done)
    return steps


@pytest.mark.parametrize("every", [2, 3, 4])
def test_eval_unit_batch_is_md_bnns_cadence(tmp_path, every):
    trainer, seen = _validated_steps(tmp_path, "trainer.eval_unit=batch", f"trainer.eval_every={every}")
    expected = md_bnn_eval_steps(trainer.steps_per_epoch, every, 2)
    assert [step for _, _, step in seen] == expected
    assert len(set(expected)) == len(expected) and trainer.steps_per_epoch in expected


def test_select_ties_keep_replaces_best_only_when_strictly_better(tmp_path):
    trainer, runlog = make(tmp_path, ToyMethod(), "trainer.select_by=val/acc", "trainer.select_ties=keep")
    runlog.close()
    assert trainer.score({"val/acc": 90.0, "val/loss": 0.5}) == (90.0,)
    assert not trainer.score({"val/acc": 90.0, "val/loss": 0.1}) > trainer.score(
        {"val/acc": 90.0, "val/loss": 0.5}
    )
    other, runlog = make(tmp_path / "loss", ToyMethod(), "trainer.select_by=val/acc")
    runlog.close()
    assert other.score({"val/acc": 90.0, "val/loss": 0.1}) > other.score({"val/acc": 90.0, "val/loss": 0.5})


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
