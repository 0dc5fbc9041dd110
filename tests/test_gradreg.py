"""Gradient-L1 / L2 penalties, Defensive Quantization and STE fine-tuning, checked against the math."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantlab.errors import ConfigError
from quantlab.methods.gradreg import orthogonality_gap
from quantlab.methods.ste import ste_activation
from quantlab.schedules import Constant
from tests.conftest import make_trainer, yaml_method


def _tiny(dtype=torch.float64, bn: bool = True, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(2, 4, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).to(dtype)


def _batch(dtype=torch.float64, n: int = 8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 2, 5, 5, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g)


def _prepared(method, dtype=torch.float64, bn: bool = True, n: int = 8):
    """A tiny model prepared for `method`, and a batch of its dtype."""
    model = _tiny(dtype=dtype, bn=bn)
    method.prepare(model)
    return (model, *_batch(dtype, n=n))


def _independent_grads(model: nn.Sequential, x, y):
    """∇_W L and ∇_y L with their own hooks (retain_grad on every ReLU output), not the method's."""
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: outputs.append(out))
        for m in model
        if isinstance(m, nn.ReLU)
    ]
    loss = F.cross_entropy(model(x), y)
    for h in hooks:
        h.remove()
    weights = [m.weight for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(loss, weights + outputs)
    return grads[: len(weights)], grads[len(weights) :]


def _penalty(method, model, x, y) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    return method.penalty(model, loss, (x, y))[method.name]


@pytest.mark.parametrize(("cls", "norm"), [("grad_l1", 1), ("grad_l2", 2)])
def test_penalty_value_equals_the_gradient_norm(cls, norm):
    method = yaml_method(cls, strength=0.3, act_strength=0.7)
    model, x, y = _prepared(method)
    value = _penalty(method, model, x, y)
    g_w, g_y = _independent_grads(model, x, y)
    flat_w, flat_y = torch.cat([g.flatten() for g in g_w]), torch.cat([g.flatten() for g in g_y])
    expect = 0.3 * flat_w.norm(p=norm) + 0.7 * flat_y.norm(p=norm)
    torch.testing.assert_close(value, expect, rtol=1e-10, atol=0)


def test_activation_gradients_are_included():
    """With λ_w = 0 the penalty is λ_y‖∇_y L‖₁ — nonzero, and exactly the activation part."""
    method = yaml_method("grad_l1", strength=0.0, act_strength=1.0)
    model, x, y = _prepared(method)
    value = _penalty(method, model, x, y)
    _, g_y = _independent_grads(model, x, y)
    assert len(method.tap.modules) == 2 and len(g_y) == 2
    expect = sum(g.abs().sum() for g in g_y)
    assert float(expect) > 0
    torch.testing.assert_close(value, expect, rtol=1e-10, atol=0)


def test_penalty_gradient_matches_finite_differences():
    """d/dθ of the penalty (double backprop) against central differences of the penalty itself."""
    method = yaml_method("grad_l1", strength=0.5)
    model, x, y = _prepared(method, bn=False)
    params = list(model.parameters())
    value = _penalty(method, model, x, y)
    analytic = torch.autograd.grad(value, params)
    g = torch.Generator().manual_seed(3)
    h = 1e-6
    for p, a in zip(params, analytic, strict=True):
        for _ in range(3):
            i = int(torch.randint(p.numel(), (1,), generator=g))
            with torch.no_grad():
                p.view(-1)[i] += h
            plus = float(_penalty(method, model, x, y))
            with torch.no_grad():
                p.view(-1)[i] -= 2 * h
            minus = float(_penalty(method, model, x, y))
            with torch.no_grad():
                p.view(-1)[i] += h
            numeric = (plus - minus) / (2 * h)
            assert numeric == pytest.approx(float(a.view(-1)[i]), rel=1e-4, abs=1e-8)


def _exact_and_fd(cls, eps: float, dtype=torch.float32):
    grads = {}
    for estimator in ("exact", "fd"):
        method = yaml_method(cls, strength=0.05, estimator=estimator, fd_eps=eps)
        model, x, y = _prepared(method, dtype, n=32)
        loss = F.cross_entropy(model(x), y)
        terms = method.penalty(model, loss, (x, y))  # what the trainer backpropagates with the loss
        (loss + sum(terms.values())).backward()
        grads[estimator] = (
            torch.cat([p.grad.flatten() for p in model.parameters()]),
            float(terms[method.name].detach()),
        )
        state = [b.clone() for b in model[1].buffers()]
        grads[estimator + "_bn"] = state
    return grads


def _penalty_gradient_error(cls, eps: float) -> float:
    """‖∇_fd − ∇_exact‖ / ‖∇_exact − ∇L‖: the relative error of the penalty's gradient by FD."""
    grads = _exact_and_fd(cls, eps)
    (exact, value_exact), (fd, value_fd) = grads["exact"], grads["fd"]
    assert value_fd == pytest.approx(value_exact, rel=1e-5)
    for a, b in zip(grads["exact_bn"], grads["fd_bn"], strict=True):  # one BN update per step
        torch.testing.assert_close(a, b)
    model = _tiny(dtype=torch.float32)  # the task gradient, to compare the penalty parts alone
    x, y = _batch(torch.float32, n=32)
    F.cross_entropy(model(x), y).backward()
    task = torch.cat([p.grad.flatten() for p in model.parameters()])
    return float((fd - exact).norm() / (exact - task).norm())


@pytest.mark.parametrize("cls", ["grad_l1", "grad_l2"])
def test_finite_difference_option_agrees_with_double_backprop(cls):
    """The documented tolerance: the penalty gradients agree to 1 % (relative ℓ2) at the default ε in
    float32, for ℓ1 (v = λ·sign g) and for ℓ2 (v = λ·g/‖g‖₂, whose entries are far below λ: the step
    is scaled by ‖v‖∞ so that the largest shift is ε·λ either way)."""
    assert _penalty_gradient_error(cls, 1e-4) < 0.01


def test_last_epochs_gate_the_penalty():
    method = yaml_method("grad_l1", strength=0.1, lam=Constant(2.0), last_epochs=2, epochs=5)
    model, x, y = _prepared(method)
    loss = F.cross_entropy(model(x), y)
    assert method.penalty(model, loss, (x, y)) == {}
    assert method.on_step(model, 10, 2) == {"lambda": 0.0}
    assert method.on_step(model, 11, 3) == {"lambda": pytest.approx(0.2)}
    assert method.strengths() == (pytest.approx(0.2), pytest.approx(0.2))
    with pytest.raises(ConfigError, match="method.last_epochs"):
        yaml_method("grad_l1", last_epochs=3, epochs=None)
    with pytest.raises(ConfigError, match="method.estimator"):
        yaml_method("grad_l1", estimator="hvp")


def test_defensive_quantization_closed_forms():
    q, _ = torch.linalg.qr(torch.randn(9, 4, dtype=torch.float64))  # orthonormal columns
    rows = q.t()  # 4 x 9 with orthonormal rows: M Mᵀ = I
    assert float(orthogonality_gap(rows.reshape(4, 1, 3, 3))) == pytest.approx(0.0, abs=1e-20)
    assert float(orthogonality_gap(2 * rows)) == pytest.approx(4 * (4 - 1) ** 2)
    w = torch.randn(5, 12, dtype=torch.float64)
    sigma = torch.linalg.svdvals(w)
    assert float(orthogonality_gap(w)) == pytest.approx(float(((sigma**2 - 1) ** 2).sum()))
    method = yaml_method("dq", strength=0.01)
    model, x, y = _prepared(method)
    value = method.penalty(model, F.cross_entropy(model(x), y), (x, y))["dq"]
    expect = 0.01 * sum(orthogonality_gap(m.weight) for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))
    torch.testing.assert_close(value, expect)


def test_ste_trains_on_the_grid_and_exports_it():
    model = _tiny(dtype=torch.float32)
    method = yaml_method("ste", bitwidth={"name": "w3a4", "weight_bits": 3, "act_bits": 4})
    method.prepare(model)
    assert method.traits.trained_bits == (3, 4)
    x, y = _batch(torch.float32)
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    conv = model[0]
    assert all(len(r.unique()) <= 2**3 for r in conv.weight.detach().flatten(1))
    original = conv.parametrizations.weight.original
    assert original.grad is not None and original.grad.abs().sum() > 0
    exported = method.export(model)
    assert not any(hasattr(m, "parametrizations") for m in exported.modules())
    assert all(not m._forward_pre_hooks for m in exported.modules())
    torch.testing.assert_close(exported[0].weight, conv.weight.detach())
    assert set(method.state_dict()["ranges"]) == {"0", "4", "6"}


def test_ste_activation_gradient_is_clipped_identity():
    x = torch.tensor([-1.0, 0.1, 0.33, 0.9, 2.0], requires_grad=True)
    out = ste_activation(x, 0.0, 1.0, 2)  # unsigned grid {0, 1/3, 2/3, 1}
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 1 / 3, 1.0, 1.0]))
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_ste_needs_integer_bits():
    with pytest.raises(ConfigError, match="bitwidth"):
        yaml_method("ste", bitwidth={"name": "binary", "weight_bits": None, "act_bits": None})
    with pytest.raises(ConfigError, match="bitwidth.act_bits"):
        yaml_method("ste", bitwidth={"name": "x", "weight_bits": 4, "act_bits": 40})


@pytest.mark.parametrize(
    "overrides",
    [
        ["method=grad_l1"],
        ["method=grad_l1", "method.estimator=fd"],
        ["method=grad_l2"],
        ["method=dq"],
        ["method=ste", "bitwidth=w4a4"],
    ],
)
def test_trains_and_logs_penalty_and_gradient_norms(tmp_path, overrides):
    from tests.conftest import train_in_process

    strength = [] if overrides[0] == "method=ste" else ["method.strength=0.001"]
    trainer, lines = train_in_process(
        tmp_path, ["schedule.epochs=1", "trainer.log_every=5", *overrides, *strength]
    )
    train = [x for x in lines if "train/loss" in x]
    normed = [x for x in train if "train/grad_norm_linf" in x]  # every 10 steps, logged every 5
    assert len(normed) >= len(train) // 2 - 1 > 0
    assert all(
        x["train/grad_norm_linf"] <= x["train/grad_norm_l2"] <= x["train/grad_norm_l1"] for x in normed
    )
    name = trainer.method.name if hasattr(trainer.method, "name") else None
    if overrides[0] != "method=ste":
        assert all(f"method/{name}" in x for x in train)
    assert trainer.last_logged["val/acc"] > 20


def test_logged_gradient_norms_are_those_of_the_task_loss(tmp_path):
    trainer = make_trainer(["trainer.grad_norms_every=1"], tmp_path)
    x, y = next(iter(trainer.train_loader))
    loss = F.cross_entropy(trainer.model(x), y)
    norms = trainer.task_gradient_norms(loss)
    weights = [p for p in trainer.model.parameters() if p.ndim > 1]
    flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, weights)])
    torch.testing.assert_close(norms["l1"], flat.abs().sum())
    torch.testing.assert_close(norms["l2"], flat.norm())
    torch.testing.assert_close(norms["linf"], flat.abs().max())


def test_test_set_gradient_norms(tmp_path):
    """test/grad_norm_*: the mean over test batches of the norms of ∇_W L (Fig. 2's quantities)."""
    from quantlab.engine.evaluate import gradient_norms

    model = _tiny(dtype=torch.float32, bn=False)
    batches = [_batch(torch.float32, n=8) for _ in range(2)]
    norms = gradient_norms(model, batches)
    expect = {"l1": 0.0, "l2": 0.0, "linf": 0.0}
    weights = [m.weight for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    for x, y in batches:
        g = torch.cat([t.flatten() for t in torch.autograd.grad(F.cross_entropy(model(x), y), weights)])
        expect["l1"] += float(g.abs().sum()) / 2
        expect["l2"] += float(g.norm()) / 2
        expect["linf"] += float(g.abs().max()) / 2
    assert norms == pytest.approx(expect, rel=1e-6)
