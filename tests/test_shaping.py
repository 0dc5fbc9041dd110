"""Foothill, L1 / L2 and the BNN+ binary regularizers, checked against the Foothill paper's math."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from quantlab.errors import ConfigError
from quantlab.methods.shaping import (
    SignActivation,
    foothill,
    foothill_grad,
    foothill_hess,
    foothill_saddle,
)
from quantlab.schedules import Constant, LogEpoch
from tests.conftest import yaml_method

SHAPES = [(1.0, 1.0), (0.5, 50.0), (16.0, 0.125), (20.0, 0.1), (100.0, 0.02)]


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


@pytest.mark.parametrize("alpha,beta", SHAPES)
def test_foothill_derivatives_match_autograd(alpha, beta):
    """Sec. 2.1's first and second derivatives against double autograd (float64)."""
    x = torch.linspace(-8 / beta, 8 / beta, 401, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(foothill(x, alpha, beta).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    torch.testing.assert_close(foothill_grad(x, alpha, beta), d1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(foothill_hess(x, alpha, beta), d2, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alpha,beta", SHAPES)
def test_saddle_points(alpha, beta):
    """Property 3: the second derivative vanishes at x₀ = ±2.3994/β, changes sign there, p(x₀) = 2α/β."""
    z = foothill_saddle()
    assert z == pytest.approx(2.3994, abs=5e-5)
    x0 = torch.tensor([-z / beta, z / beta], dtype=torch.float64)
    curvature_scale = alpha * beta  # the size of p'' near 0
    assert foothill_hess(x0, alpha, beta).abs().max() < 1e-12 * curvature_scale
    torch.testing.assert_close(
        foothill(x0, alpha, beta), torch.full_like(x0, 2 * alpha / beta), rtol=1e-12, atol=0
    )
    inside, outside = torch.tensor([0.99 * z / beta]), torch.tensor([1.01 * z / beta])
    assert foothill_hess(inside.double(), alpha, beta) > 0 > foothill_hess(outside.double(), alpha, beta)
    # quasiconvex (Property 4): decreasing on (−∞, 0), increasing on (0, ∞)
    x = torch.linspace(-10 / beta, 10 / beta, 1001, dtype=torch.float64)
    assert (foothill_grad(x, alpha, beta) * x.sign() >= 0).all()


def test_limit_towards_lasso():
    """Property 1: α = 1, β → ∞ gives |x|; sup_x |p(x) − |x|| = max_z z(1 − tanh(z/2)) / β ≈ 0.557/β."""
    x = torch.linspace(-3, 3, 200001, dtype=torch.float64)
    z = torch.linspace(0, 20, 200001, dtype=torch.float64)
    bound = float((z * (1 - torch.tanh(z / 2))).max())
    assert bound == pytest.approx(0.557, abs=1e-3)
    errors = []
    for beta in (10.0, 100.0, 1000.0, 1e4):
        err = float((foothill(x, 1.0, beta) - x.abs()).abs().max())
        assert err <= bound / beta * (1 + 1e-6)
        errors.append(err)
    assert errors[-1] < 1e-4 and all(a > b for a, b in zip(errors, errors[1:], strict=False))


def test_limit_towards_ridge():
    """Property 2: β = 2/α: |p(x) − x²| ≤ x⁴/(3α²) (the Taylor term of Eq. 2) on [−c, c], and the
    integrated squared error of Eq. 4 is ≈ c⁹/(81α⁴)."""
    c = 5.0
    x = torch.linspace(-c, c, 20001, dtype=torch.float64)
    for alpha in (16.0, 64.0, 256.0):
        err = (foothill(x, alpha, 2 / alpha) - x**2).abs()
        assert (err <= x**4 / (3 * alpha**2) + 1e-15).all()
        assert float(err.max()) <= c**4 / (3 * alpha**2)
    alpha = 64.0
    xs = torch.linspace(0, c, 200001, dtype=torch.float64)
    integral = torch.trapezoid((xs**2 - foothill(xs, alpha, 2 / alpha)) ** 2, xs)
    assert float(integral) == pytest.approx(c**9 / (81 * alpha**4), rel=0.02)


@pytest.mark.parametrize(
    "cls,f",
    [
        ("l1", lambda x: x.abs()),
        ("l2", lambda x: x**2),
        ("foothill", lambda x: 0.75 * x * torch.tanh(50 * x / 2)),
    ],
)
def test_plain_penalty_is_lambda_sum_f_of_every_weight(cls, f):
    net = _net().double()
    kwargs = {"alpha": 0.75, "beta": 50.0} if cls == "foothill" else {}
    method = yaml_method(cls, strength=1e-3, **kwargs)
    method.prepare(net)
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    expected = 1e-3 * sum(f(w).sum() for w in weights)
    (value,) = method.penalty(net, torch.tensor(0.0), None).values()
    torch.testing.assert_close(value, expected)
    traits = method.traits
    assert method.export(net) is net and not traits.exported_differs and traits.trained_bits is None


@pytest.mark.parametrize(
    "make,f,fprime",
    [
        (lambda: yaml_method("bnn_r1", strength=1.0, lam=Constant(1.0)), lambda d: d.abs(), torch.sign),
        (lambda: yaml_method("bnn_r2", strength=1.0, lam=Constant(1.0)), lambda d: d**2, lambda d: 2 * d),
        (
            lambda: yaml_method(
                "foothill", alpha=20.0, beta=0.1, strength=1.0, lam=Constant(1.0), binary=True
            ),
            lambda d: 20.0 * d * torch.tanh(0.1 * d / 2),
            lambda d: foothill_grad(d, 20.0, 0.1),
        ),
    ],
)
def test_binary_penalty_and_its_scale_gradient(make, f, fprime):
    """Eqs. 5–7: Σ f(w − μ·sign w) with μ per output channel, first / last layers in float;
    ∂/∂μ_c = −Σ_{i in channel c} f'(|w_i| − μ_c) (the closed form, against autograd)."""
    net = _net().double()
    method = make()
    method.prepare(net)
    assert method.layers == ["3", "7"]  # the first conv and the last linear stay in float
    (value,) = method.penalty(net, torch.tensor(0.0), None).values()
    expected, mus, closed = 0.0, [], []
    for path in method.layers:
        module = net.get_submodule(path)
        w = module.parametrizations.weight.original.detach()
        mu = module.parametrizations.weight[0].mu
        assert mu.shape == (w.shape[0],) + (1,) * (w.ndim - 1)
        torch.testing.assert_close(mu.detach().reshape(-1), w.abs().reshape(w.shape[0], -1).mean(1))
        expected = expected + f(w - mu.detach() * torch.where(w >= 0, 1.0, -1.0)).sum()
        mus.append(mu)
        closed.append(-fprime(w.abs() - mu.detach()).reshape(w.shape[0], -1).sum(1).reshape(mu.shape))
    torch.testing.assert_close(value.detach(), expected)
    for g, c in zip(torch.autograd.grad(value, mus), closed, strict=True):
        torch.testing.assert_close(g, c)


def test_binary_forward_export_and_straight_through_gradient():
    """forward: binary trains with μ·sign(w); the export holds sign(w)·μ (2 values per channel) and
    computes what the trained network computes; the latent weights get the straight-through gradient."""
    net = _net()
    method = yaml_method("bnn_r2", strength=1e-3)
    method.prepare(net)
    x = torch.randn(5, 1, 4, 4)
    net.eval()
    exported = method.export(net)
    torch.testing.assert_close(exported(x), net(x))
    for path in method.layers:
        w = exported.get_submodule(path).weight
        mu = net.get_submodule(path).parametrizations.weight[0].mu
        assert not hasattr(exported.get_submodule(path), "parametrizations")
        for c in range(w.shape[0]):
            assert torch.equal(w[c].abs().unique(), mu[c].detach().reshape(1))
    first = exported.get_submodule("0").weight
    torch.testing.assert_close(first, net.get_submodule("0").weight)  # kept in float
    traits = method.traits
    assert traits.trained_bits == (1, None) and traits.exported_differs and not traits.ptq_by_default
    # straight-through: ∂L/∂w = ∂L/∂(μ sign w) · μ · 1{|w| ≤ 1}
    net.train()
    module = net.get_submodule("3")
    latent = module.parametrizations.weight.original
    with torch.no_grad():
        latent[0, 0, 0, 0] = 1.5  # beyond the clip
    with parametrize.cached():
        effective = module.weight
        effective.retain_grad()
        net(x).square().sum().backward()
    mu = module.parametrizations.weight[0].mu.detach()
    expected = effective.grad * mu * (latent.abs() <= 1)  # d(μ·sign w)/dw := μ·1{|w| ≤ 1}
    torch.testing.assert_close(latent.grad, expected)
    assert latent.grad[0, 0, 0, 0] == 0


def test_latent_forward_trains_the_float_weights():
    net = _net()
    before = net.get_submodule("3").weight.detach().clone()
    method = yaml_method("bnn_r1", strength=1e-3, forward="latent")
    method.prepare(net)
    torch.testing.assert_close(net.get_submodule("3").weight, before)  # the layer sees w itself
    assert method.traits.exported_differs


def test_sign_activations_and_their_gradient():
    net = _net()
    method = yaml_method("foothill", binary=True, binarize_acts=True)
    method.prepare(net)
    acts = [m for m in net.modules() if isinstance(m, SignActivation)]
    assert len(acts) == 2 and isinstance(net[8], nn.ReLU)  # the input of the float last layer stays real
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 1.7], requires_grad=True)
    y = acts[0](x)
    assert y.tolist() == [-1, -1, 1, 1, 1, 1]
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0]


def test_lambda_grows_with_log_epoch_for_binary_forms():
    net = _net()
    method = yaml_method("bnn_r1", strength=1e-6)
    assert isinstance(method.schedule, LogEpoch)
    method.prepare(net)
    assert method.penalty(net, torch.tensor(0.0), None) == {}  # λ = λ₀ log 1 = 0 in the first epoch
    for epoch in (1, 4, 9):
        logged = method.on_step(net, 100, epoch)
        assert logged["lambda"] == pytest.approx(1e-6 * math.log(epoch + 1))
    assert isinstance(yaml_method("l1").schedule, Constant)


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="method.alpha"):
        yaml_method("foothill", alpha=0)
    with pytest.raises(ConfigError, match="method.forward"):
        yaml_method("bnn_r1", forward="soft")
    with pytest.raises(ConfigError, match="method.strength"):
        yaml_method("l2", strength=-1)
    with pytest.raises(ConfigError, match="method.binarize_acts"):
        yaml_method("l1", binarize_acts=True)


@pytest.mark.parametrize("method", ["l1", "l2", "foothill", "bnn_r1", "bnn_r2"])
def test_each_method_trains_and_logs_its_penalty(tmp_path, method):
    from tests.conftest import train_in_process

    trainer, lines = train_in_process(
        tmp_path, ["schedule.epochs=2", "trainer.log_every=5", f"method={method}"]
    )
    train = [x for x in lines if "train/loss" in x]
    assert any(x.get(f"method/{method}", 0) > 0 for x in train)  # binary: log(t) > 0 from epoch 2
    assert trainer.last_logged["val/acc"] > 50
    if method.startswith("bnn"):
        assert trainer.last_logged["val/acc_exported"] > 50 and "method/mu_mean" in trainer.last_logged
