"""The MD paper's presets (Tables 1, 2, 5) run as the public code (md-bnn / pmf) ran them."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from quantlab.quant.projections import softmax_pmf_code
from quantlab.runs.build import build
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


def _public_code_schedule(base_lr, lr_scale, beta_scale, beta_interval, cap, checkpoints):
    """md-bnn's loop, re-derived: `scheduler.step()` and the β update both run at the top of every
    iteration, iteration 0 included (StepLR(step_size=30k, gamma=lr_scale); β ← min(β·scale, cap)
    when it % interval == 0), then the step uses (lr, β)."""
    lr, beta, seen = base_lr, 1.0, {}
    for it in range(max(checkpoints) + 1):
        if it % 30000 == 0:
            lr *= lr_scale
        if it % beta_interval == 0:
            beta = min(beta * beta_scale, cap)
        if it in checkpoints:
            seen[it] = (lr, beta)
    return seen


def test_the_presets_are_found():
    assert len(PRESETS) == 12 and len(ROWS) >= 80


@pytest.mark.parametrize(("preset", "method"), ROWS, ids=[f"{p}-{m}" for p, m in ROWS])
def test_lr_and_beta_step_at_iteration_zero_like_the_public_code(preset, method):
    cfg = compose([f"experiment={preset}", f"method={method}"])
    s, row = cfg.schedule, cfg.preset.row
    lr, beta = instantiate(s.lr), instantiate(s.beta)
    interval = int(row.get("beta_interval", 1000))
    checkpoints = {0, 1, interval - 1, interval, 2 * interval, 29999, 30000, 59999, 60000, 99999}
    expected = _public_code_schedule(
        float(row.lr),
        float(row.lr_scale),
        float(row.get("beta_scale", 1.0)),
        interval,
        float(s.beta.cap),
        checkpoints,
    )
    for it, (lr_then, beta_then) in expected.items():
        assert float(s.optimizer.lr) * lr(it, 0) == pytest.approx(lr_then, rel=1e-9), (it, "lr")
        assert beta(it, 0) == pytest.approx(beta_then, rel=1e-9), (it, "beta")
    assert lr(0, 0) == pytest.approx(float(row.lr_scale))  # the first step already at lr * lr_scale


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_select_the_model_every_100_iterations_and_say_how_they_run(preset):
    cfg = compose([f"experiment={preset}", "method=md_tanh_s"])
    assert (cfg.trainer.eval_every, cfg.trainer.eval_unit, cfg.trainer.select_by) == (100, "step", "auto")
    header = (REPO / "conf" / "experiment" / f"{preset}.yaml").read_text()
    assert "iteration 0" in header and "every 100 iterations" in header


@pytest.mark.parametrize("preset", PRESETS)
def test_rows_use_the_public_codes_method_options(preset):
    rows = compose([f"experiment={preset}"]).preset.rows
    for method, options in {
        "pmf": {"jacobian": "pmf_code", "lift_init": "independent"},
        "md_softmax_s": {"lift_init": "independent"},
        "bc": {"clip": False},
    }.items():
        if method not in rows:
            continue
        cfg = compose([f"experiment={preset}", f"method={method}"])
        for key, value in options.items():
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
    assert compose(["method=md_tanh_s"]).trainer.eval_unit == "epoch"
