"""The MD paper's presets (Tables 1, 2, 5) run as the public code (md-bnn / pmf) ran them."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from quantlab.quant.projections import softmax_pmf_code
from quantlab.runs.components import build
from quantlab.runs.config import compose, group_options
from tests.conftest import REPO

PRESETS = [
    p for p in group_options("experiment") if p.split("_")[:2] in (["md", "t1"], ["md", "t2"], ["md", "t5"])
]
ROWS = [
    (preset, method)
    for preset in PRESETS
    for method in compose([f"experiment={preset}"]).preset.rows  # the rows do not depend on the method
]


class StepLR04:
    """torch 0.4.0's `StepLR(optimizer, step_size=1, gamma)`, written out (md-bnn pins torch==0.4.0).

    `_LRScheduler.__init__(optimizer, last_epoch=-1)` runs `self.step(last_epoch + 1)`, i.e. step(0),
    then sets `self.last_epoch = last_epoch` (−1 again); `step(epoch=None)` takes epoch =
    last_epoch + 1 and sets lr = base_lr · gamma^(epoch // step_size). So the first explicit step()
    computes epoch 0 once more and leaves the lr where it was."""

    def __init__(self, base_lr: float, gamma: float, step_size: int = 1) -> None:
        self.base_lr, self.gamma, self.step_size = base_lr, gamma, step_size
        self.last_epoch = -1
        self.step(self.last_epoch + 1)
        self.last_epoch = -1

    def step(self, epoch: int | None = None) -> None:
        if epoch is None:
            epoch = self.last_epoch + 1
        self.last_epoch = epoch
        self.lr = self.base_lr * self.gamma ** (self.last_epoch // self.step_size)


def md_bnn_loop(base_lr, lr_scale, beta_scale, beta_interval, cap, wanted, lr_interval=30000):
    """(lr, β) that md-bnn's iteration `iters` trains with, for each iteration in `wanted`: its loop
    (methods/tanh_projn.py and the others) is train_step(..., beta) at `iters`, then
    `if iters % beta_interval == 0: beta = min(beta * beta_scale, BETAMAX)`, then
    `if iters % lr_interval == 0: scheduler.step()`, then iters += 1 (β starts at 1)."""
    scheduler, beta, seen = StepLR04(base_lr, lr_scale), 1.0, {}
    for iters in range(max(wanted) + 1):
        if iters in wanted:
            seen[iters] = (scheduler.lr, beta)  # what train_step uses
        if iters % beta_interval == 0:
            beta = min(beta * beta_scale, cap)
        if iters % lr_interval == 0:
            scheduler.step()
    return seen


def test_the_presets_are_found():
    assert len(PRESETS) == 12 and len(ROWS) >= 80


@pytest.mark.parametrize(("preset", "method"), ROWS, ids=[f"{p}-{m}" for p, m in ROWS])
def test_lr_and_beta_are_md_bnns_under_torch_0_4(preset, method):
    """The value a schedule returns for step t is what iteration t (0-based) uses: md-bnn's lr and β."""
    cfg = compose([f"experiment={preset}", f"method={method}"])
    s, row = cfg.schedule, cfg.preset.row
    lr, beta = instantiate(s.lr), instantiate(s.beta)
    interval, g = int(row.get("beta_interval", 1000)), float(row.lr_scale)
    scale, cap = float(row.get("beta_scale", 1.0)), float(s.beta.cap)
    its = {0, 1, interval, interval + 1, 29999, 30000, 30001, 60001, 90001, 99999}
    expected = md_bnn_loop(float(row.lr), g, scale, interval, cap, its)
    for t, (lr_then, beta_then) in expected.items():
        assert float(s.optimizer.lr) * lr(t, 0) == pytest.approx(lr_then, rel=1e-9), (t, "lr")
        assert beta(t, 0) == pytest.approx(beta_then, rel=1e-9), (t, "beta")
        # the closed forms: g^max(0, ⌊(t−1)/30000⌋); β 1 at t = 0, then min(s^(1 + ⌊(t−1)/I⌋), cap)
        assert lr(t, 0) == pytest.approx(g ** max(0, (t - 1) // 30000), rel=1e-9), t
        closed = 1.0 if t == 0 else min(scale ** (1 + (t - 1) // interval), cap)
        assert beta(t, 0) == pytest.approx(closed, rel=1e-9), t
    assert lr(0, 0) == 1.0 and lr(30000, 0) == 1.0 and lr(99999, 0) == pytest.approx(g**3)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_select_the_model_as_md_bnn_and_say_how_they_run(preset):
    cfg = compose([f"experiment={preset}", "method=md_tanh_s"])
    t, d = cfg.trainer, cfg.dataset
    assert (t.eval_every, t.eval_unit, t.select_by, t.select_ties) == (100, "batch", "auto", "keep")
    if "tinyimagenet" in preset:  # md-bnn selects on the test set there; quantlab on a held-out split
        assert (d.val_split, d.val_augment, d.val_size) == ("random", False, 10000)
    else:  # CIFAR: the last 5k of the 50k training images, augmented (45k/5k)
        assert (d.val_split, d.val_augment, d.val_size) == ("last", True, 5000)
    header = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
    assert "30001, 60001 and 90001" in header and "i % 100 == 0" in header
    assert "already at iteration 0" not in header and "before the first batch" not in header


@pytest.mark.parametrize("preset", PRESETS)
def test_rows_use_the_public_codes_method_options(preset):
    rows = compose([f"experiment={preset}"]).preset.rows
    for method, options in {
        "pmf": {"jacobian": "pmf_code", "lift_init": "independent"},
        "md_softmax_s": {"lift_init": "independent"},
        "md_softmax": {"lift_init": "independent"},  # mda_softmax.py builds the same SLinear/SConv2d
        "pq_star": {"scope": {"first": "md_t1" in preset, "fc": False, "shortcut": False}},
        "bc": {"clip": False},
    }.items():
        if method not in rows:
            continue
        cfg = compose([f"experiment={preset}", f"method={method}"])
        for key, value in options.items():
            if isinstance(value, dict):
                assert {k: cfg.method[key][k] for k in value} == value, (method, key)
            else:
                assert cfg.method[key] == value, (method, key)
        built = build(cfg.method, "method")
        if method == "pmf":
            assert built.project is softmax_pmf_code  # β(I − uuᵀ)
        if method == "bc":
            assert built.clip is False


def test_the_defaults_outside_the_presets_stay_the_papers():
    assert compose(["method=pmf"]).method.jacobian == "exact"
    assert compose(["method=md_softmax_s"]).method.lift_init == "product"
    assert compose(["method=bc"]).method.clip is True
    plain = compose(["method=md_tanh_s"])
    assert (plain.trainer.eval_unit, plain.trainer.select_ties) == ("epoch", "loss")
    assert (plain.dataset.val_split, compose(["dataset=cifar10"]).dataset.val_augment) == ("random", False)
    assert compose(["method=md_softmax"]).method.lift_init == "product"
