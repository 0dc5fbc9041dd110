"""The MD paper's methods against their equations: closed forms, finite differences, Algorithms 1-2."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from torch import nn

from quantlab.errors import ConfigError
from quantlab.methods.mirror import MirrorAdam, md_softmax_update, md_tanh_update
from quantlab.methods.proxquant import prox_adaptive, prox_binary, prox_nearest, ternarize_adaptive
from quantlab.methods.weights import BINARY, TERNARY, WeightQuantizer
from quantlab.quant import projections as P
from quantlab.runs.components import build
from quantlab.runs.config import compose, group_options
from quantlab.runs.runlog import RunLog
from tests.conftest import REPO, make_trainer

LEVELS = {"binary": BINARY, "ternary": TERNARY}


def weight_quantizers() -> dict[str, type[WeightQuantizer]]:
    """Every option of conf/method/ whose class trains weights towards the levels Q (the MD paper's
    methods and baselines), found by reading conf/method/, not listed by hand."""
    classes = {}
    for name in group_options("method"):
        cls = get_class(OmegaConf.load(REPO / "conf" / "method" / f"{name}.yaml")["_target_"])
        if issubclass(cls, WeightQuantizer):
            classes[name] = cls
    return classes


METHODS = sorted(weight_quantizers())
UNSUPPORTED = {
    (m, b) for m, cls in weight_quantizers().items() for b in LEVELS if LEVELS[b] not in cls.supported
}
PAIRS = [(m, b) for m in METHODS for b in ("binary", "ternary") if (m, b) not in UNSUPPORTED]


def build_method(name: str, bitwidth: str, *extra: str):
    return build(compose([f"method={name}", f"bitwidth={bitwidth}", *extra]).method, "method")


def eq15(w: torch.Tensor, g: torch.Tensor, eta: float, beta: float) -> torch.Tensor:
    """Eq. 15 exactly as printed: [r e^{-2βηg} − 1] / [r e^{-2βηg} + 1], r = (1 + w)/(1 − w)."""
    r = (1 + w) / (1 - w) * torch.exp(-2 * beta * eta * g)
    return (r - 1) / (r + 1)


# -- MD-tanh (Eq. 15) and MD-softmax (Eq. 20) -------------------------------------------------------------


def test_md_tanh_update_is_eq15():
    torch.manual_seed(0)
    w = torch.empty(1000, dtype=torch.float64).uniform_(-0.95, 0.95)
    g = torch.randn(1000, dtype=torch.float64)
    for eta, beta in [(1e-3, 1.0), (0.01, 5.0), (0.1, 2.0)]:
        new = md_tanh_update(w, g, eta, beta, eps=0.0)
        torch.testing.assert_close(new, eq15(w, g, eta, beta), rtol=1e-10, atol=1e-12)
        # ... which is tanh(atanh(w) − βηg): since (1+w)/(1−w) = exp(2 atanh w), the 2 in the
        # exponent of Eq. 15 cancels against the ½ of tanh; tanh(atanh(w) − 2βηg) is a different step.
        torch.testing.assert_close(new, torch.tanh(torch.atanh(w) - beta * eta * g), rtol=1e-10, atol=1e-12)
        assert not torch.allclose(new, torch.tanh(torch.atanh(w) - 2 * beta * eta * g))


def test_md_tanh_update_stays_inside_and_is_stable_at_the_boundary():
    w = torch.tensor([-1.0, -0.999999, 0.0, 1.0])
    out = md_tanh_update(w, torch.tensor([1e6, -1e6, 0.0, -5.0]), 1.0, 1e4)
    assert torch.isfinite(out).all() and out.abs().max() <= 1


def test_md_softmax_update_is_eq20_on_the_simplex():
    torch.manual_seed(0)
    u = torch.softmax(torch.randn(500, 3, dtype=torch.float64), -1)
    g = torch.randn(500, 3, dtype=torch.float64)
    eta, beta = 0.05, 3.0
    new = md_softmax_update(u, g, eta, beta)
    expected = u * torch.exp(-beta * eta * g) / (u * torch.exp(-beta * eta * g)).sum(-1, keepdim=True)
    torch.testing.assert_close(new, expected)
    assert (new >= 0).all()
    torch.testing.assert_close(new.sum(-1), torch.ones(500, dtype=torch.float64))


def _one_mirror_step(direction: str, mirror: str, levels: int = 2):
    torch.manual_seed(1)
    shape = (4, 3) if mirror == "tanh" else (4, levels)
    start = torch.tanh(torch.randn(shape)) if mirror == "tanh" else torch.softmax(torch.randn(shape), -1)
    p = nn.Parameter(start.clone())
    opt = MirrorAdam([{"params": [p], "mirror": mirror}], beta=lambda: 2.5, lr=0.01, direction=direction)
    grads = [torch.randn(shape) for _ in range(3)]
    ref = nn.Parameter(torch.zeros(shape))
    adam = torch.optim.Adam([ref], lr=0.01)
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        ref.grad = g.clone()
        r0 = ref.detach().clone()
        adam.step()
        d = g if direction == "sgd" else -(ref.detach() - r0) / 0.01  # Adam's own direction m̂/(√v̂+ε)
        if mirror == "tanh":
            expected = eq15(before.double(), d.double(), 0.01, 2.5).float()
        else:
            e = before * torch.exp(-2.5 * 0.01 * d)
            expected = e / e.sum(-1, keepdim=True)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("direction", ["adam", "sgd"])
@pytest.mark.parametrize("mirror", ["tanh", "softmax"])
@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_mirror_optimizer_takes_the_md_step(direction, mirror, kernel, monkeypatch):
    """Algorithm 1 with Adam-based directions (and the textbook raw-gradient variant), through
    torch's fused Adam kernel (CPU and CUDA) and through the foreach ops (other devices)."""
    if kernel == "foreach":
        monkeypatch.setattr("quantlab.methods.mirror._fused_adam_applies", lambda tensors: False)
    for levels in (2, 3) if mirror == "softmax" else (2,):
        _one_mirror_step(direction, mirror, levels)


# -- the stable forms: Algorithm 2 / Eq. 23 ----------------------------------------------------------------


def _tiny(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Linear(4, 3), torch.randn(8, 4), torch.randint(0, 3, (8,))


def _sgd_step(method, model, x, y, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _grad_at(w_value: torch.Tensor, b_value: torch.Tensor, x, y) -> tuple[torch.Tensor, torch.Tensor]:
    w = w_value.detach().clone().requires_grad_()
    b = b_value.detach().clone().requires_grad_()
    nn.functional.cross_entropy(x @ w.T + b, y).backward()
    return w.grad, b.grad


@pytest.mark.parametrize("bitwidth", ["binary", "ternary"])
def test_md_tanh_s_is_algorithm_2(bitwidth):
    model, x, y = _tiny()
    method = build_method("md_tanh_s", bitwidth, "method.init=keep")
    method.beta.value = 1.7
    method.prepare(model)
    aux_w = method.aux(model, "weight").detach().clone()
    aux_b = method.aux(model, "bias").detach().clone()
    project = P.shifted_tanh if bitwidth == "ternary" else P.tanh_projection
    gw, gb = _grad_at(project(aux_w, 1.7), project(aux_b, 1.7), x, y)  # g^k = ∇_w L at w^k = P(w̃^k)
    _sgd_step(method, model, x, y, lr=0.1)
    torch.testing.assert_close(method.aux(model, "weight").detach(), aux_w - 0.1 * gw)  # w̃ ← w̃ − η g
    torch.testing.assert_close(method.aux(model, "bias").detach(), aux_b - 0.1 * gb)


@pytest.mark.parametrize("bitwidth", ["binary", "ternary"])
def test_md_softmax_s_is_eq23_in_u_space(bitwidth):
    model, x, y = _tiny()
    method = build_method("md_softmax_s", bitwidth, "method.init=keep")
    method.beta.value = 1.3
    method.prepare(model)
    q = method.levels
    aux = method.aux(model, "weight").detach().clone()
    w = torch.softmax(1.3 * aux, -1) @ q
    gw, _ = _grad_at(w, P.softmax_projection(method.aux(model, "bias").detach(), 1.3, q), x, y)
    _sgd_step(method, model, x, y, lr=0.1)
    torch.testing.assert_close(method.aux(model, "weight").detach(), aux - 0.1 * gw.unsqueeze(-1) * q)


def test_gd_tanh_gradient_is_the_analytic_jacobian():
    model, x, y = _tiny()
    method = build_method("gd_tanh", "binary", "method.init=keep")
    method.beta.value = 2.2
    method.prepare(model)
    aux = method.aux(model, "weight")
    gw, _ = _grad_at(torch.tanh(2.2 * aux), torch.tanh(2.2 * method.aux(model, "bias")), x, y)
    nn.functional.cross_entropy(model(x), y).backward()
    jac = 2.2 * (1 - torch.tanh(2.2 * aux.detach()) ** 2)
    torch.testing.assert_close(aux.grad, gw * jac)


def test_shifted_tanh_gradient_matches_finite_differences():
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    for beta in (1.0, 3.0, 10.0):
        h = 1e-6
        fd = (P.shifted_tanh(x + h, beta) - P.shifted_tanh(x - h, beta)) / (2 * h)
        torch.testing.assert_close(P.shifted_tanh_grad(x, beta), fd, rtol=1e-6, atol=1e-8)
        xa = x.clone().requires_grad_()
        P.shifted_tanh(xa, beta).sum().backward()
        torch.testing.assert_close(xa.grad, fd, rtol=1e-6, atol=1e-8)


def test_shifted_tanh_limits_to_the_ternary_step():
    x = torch.tensor([-1.2, -0.7, -0.3, 0.0, 0.3, 0.7, 1.2])
    torch.testing.assert_close(P.shifted_tanh(x, 1e4), P.hard_ternary(x))
    assert P.shifted_tanh(torch.tensor([0.0]), 1.0).item() == 0.0


def test_pmf_gradients():
    torch.manual_seed(0)
    u = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    g = torch.randn(5, dtype=torch.float64)
    (P.softmax_projection(u, 2.0, q) * g).sum().backward()
    s = torch.softmax(2.0 * u.detach(), -1)
    gu = g[:, None] * q
    exact = 2.0 * s * (gu - (s * gu).sum(-1, keepdim=True))  # β(diag(u) − uuᵀ)·∂L/∂u
    torch.testing.assert_close(u.grad, exact)
    u2 = u.detach().clone().requires_grad_()
    (P.softmax_pmf_code(u2, 2.0, q) * g).sum().backward()
    torch.testing.assert_close(u2.grad, 2.0 * (gu - s * (s * gu).sum(-1, keepdim=True)))  # β(I − uuᵀ)·∂L/∂u


# -- BinaryConnect and ProxQuant ---------------------------------------------------------------------


def test_binary_connect():
    w = torch.tensor([-2.0, -0.5, 0.0, 0.4, 1.5], requires_grad=True)
    out = P.binary_connect_sign(w)
    assert out.tolist() == [-1, -1, 1, 1, 1]
    out.backward(torch.ones(5))
    assert w.grad.tolist() == [0, 1, 1, 1, 0]  # cancelled where |w| > 1
    model, x, y = _tiny()
    method = build_method("bc", "binary")
    method.prepare(model)
    with torch.no_grad():
        method.aux(model, "weight").mul_(10)
    method.on_step(model, 0, 0)
    assert method.aux(model, "weight").abs().max() <= 1  # latent weights clipped


def test_binary_connect_without_clipping_only_masks_the_gradient():
    """md-bnn's BC (the MD tables' row): latent weights beyond ±1 stay there; their gradient is 0."""
    model, x, y = _tiny()
    method = build_method("bc", "binary", "method.clip=false")
    method.prepare(model)
    with torch.no_grad():
        method.aux(model, "weight").mul_(10)
    before = method.aux(model, "weight").detach().clone()
    method.on_step(model, 0, 0)
    torch.testing.assert_close(method.aux(model, "weight"), before)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grad = method.aux(model, "weight").grad
    assert (grad[before.abs() > 1] == 0).all() and (grad[before.abs() <= 1] != 0).any()


@pytest.mark.parametrize("name", ["md_softmax_s", "pmf", "md_softmax"])
def test_lift_init_independent_is_md_bnns_one_layer_init(name):
    """lift_init=product: ũ⁰ = w⁰·q; independent: md-bnn's SLinear / SConv2d, one layer with out·d
    outputs xavier_uniform-initialised as a whole (bound √(6/(fan_in + d·fan_out))), output channel
    o·d + λ holding level λ of weight o (its `ucollapse` views d consecutive channels)."""
    torch.manual_seed(0)
    w = torch.empty(200, 300)
    nn.init.xavier_uniform_(w)
    q = torch.tensor(TERNARY)
    torch.testing.assert_close(build_method(name, "ternary").lift(w), w[..., None] * q)
    method = build_method(name, "ternary", "method.lift_init=independent")
    u = method.lift(w)
    bound = math.sqrt(6 / (300 + 3 * 200))
    assert u.shape == (200, 300, 3) and u.abs().max() <= bound and u.abs().max() > 0.99 * bound
    for level in range(3):
        assert float(u[..., level].std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
    corr = torch.corrcoef(torch.cat([u, w[..., None]], -1).reshape(-1, 4).T)
    assert corr.sub(torch.eye(4)).abs().max() < 0.02  # independent of each other and of w
    # md-bnn's layers, re-derived: the same draws from the same generator state
    for shape, make in (
        ((7, 5), lambda d: nn.Linear(5, 7 * d)),
        ((6, 4, 3, 3), lambda d: nn.Conv2d(4, 6 * d, 3)),
    ):
        for count in (3, 2):
            layer = make(count)
            torch.manual_seed(1)
            nn.init.xavier_uniform_(layer.weight)
            torch.manual_seed(1)
            mine = build_method(name, "ternary" if count == 3 else "binary", "method.lift_init=independent")
            got = mine.lift(torch.zeros(shape))
            for o in range(shape[0]):
                for lam in range(count):
                    torch.testing.assert_close(
                        got[o, ..., lam], layer.weight[o * count + lam], rtol=0, atol=0
                    )
    bias = method.lift(torch.zeros(5000))
    assert float(bias.std()) == pytest.approx(0.1, rel=0.05)  # 1-D: normal(0, 0.1), as md-bnn's biases
    with pytest.raises(ConfigError, match="method.lift_init=independent"):
        build_method(name, "ternary", "method.lift_init=independent", "method.init=keep")
    with pytest.raises(ConfigError, match="method.lift_init='w'"):
        build_method(name, "ternary", "method.lift_init=w")


def test_md_softmax_s_attaches_the_independent_lift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30))
    method = build_method("md_softmax_s", "binary", "method.lift_init=independent")
    method.prepare(model)
    u = method.aux(model[0], "weight").detach()
    assert u.shape == (30, 40, 2) and corr_of(u[..., 0], u[..., 1]) < 0.2


def corr_of(a: torch.Tensor, b: torch.Tensor) -> float:
    return abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]))


def test_prox_binary_closed_form():
    w = torch.tensor([-1.8, -1.0, -0.3, 0.2, 0.9, 1.05, 3.0])
    s = 0.25
    out = prox_binary(w, s)
    # |w| moves towards 1 by s (not past it), then clipped to [-1, 1].
    expected = torch.sign(w) * torch.clamp(
        torch.where((w.abs() - 1).abs() <= s, torch.ones(7), w.abs() + s * torch.sign(1 - w.abs())), max=1
    )
    torch.testing.assert_close(out, expected)


def test_prox_nearest_solves_its_problem():
    """prox(w) = argmin_{x ∈ [−1, 1]} ½(x − w)² + s·½ dist(x, Q)², checked on a fine grid (the public
    code clips to [−1, 1] after every prox)."""
    q = torch.tensor([-1.0, 0.0, 1.0])
    grid = torch.linspace(-1, 1, 20001)
    dist2 = ((grid[:, None] - q) ** 2).min(1).values
    for w in (-1.4, -0.6, -0.2, 0.1, 0.45, 0.8, 1.3, 3.0):
        for s in (0.1, 1.0, 4.0):
            objective = 0.5 * (grid - w) ** 2 + s * 0.5 * dist2
            best = grid[objective.argmin()]
            assert abs(prox_nearest(torch.tensor([w]), s, q).item() - best.item()) < 2e-4


def _public_ternarize(a: torch.Tensor) -> torch.Tensor:
    """ProxQuant's reg.py `ternarize` (delta_method='mean'), re-derived step by step."""
    out = a.clone()
    delta = a.abs().mean() * 0.7
    out.masked_fill_(a.abs() < delta, 0)
    inds_p, inds_n = a >= delta, a <= -delta
    out.masked_fill_(inds_p, a[inds_p].mean())
    out.masked_fill_(inds_n, a[inds_n].mean())
    return out


def test_adaptive_ternarization_is_the_public_codes():
    """Separate means for the positive and negative levels (skewed weights give two magnitudes), and
    the prox (w + s·ternarize(w)) / (1 + s) clipped to [−1, 1] like the public code's bin_op.clip()."""
    g = torch.Generator().manual_seed(0)
    w = torch.cat([torch.randn(500, generator=g) * 0.3 + 0.05, torch.tensor([1.7, -2.4, 0.0])])
    t = ternarize_adaptive(w)
    torch.testing.assert_close(t, _public_ternarize(w))
    pos, neg = t[t > 0].unique(), t[t < 0].unique()
    assert pos.numel() == 1 and neg.numel() == 1 and abs(float(pos + neg)) > 0.01  # two levels
    for s in (0.1, 1.0, 5.0):
        expected = ((w + _public_ternarize(w) * s) / (1 + s)).clamp(-1, 1)
        torch.testing.assert_close(prox_adaptive(w, s), expected)
    assert prox_adaptive(w, 0.1).abs().max() <= 1
    # a side with no weight beyond Δ has no level (the public code would take the mean of nothing: NaN)
    torch.testing.assert_close(ternarize_adaptive(torch.tensor([0.0, 1.0])), torch.tensor([0.0, 1.0]))


# -- export, scope, β -----------------------------------------------------------------------------------


def _trained(method_name: str, bitwidth: str, tmp_path, *extra: str, steps: int = 6):
    overrides = [
        f"method={method_name}",
        f"bitwidth={bitwidth}",
        "schedule=md_cifar",
        "schedule.batch_size=32",
        f"schedule.iterations={steps}",
        "schedule.beta.interval=2",
        *extra,
    ]
    trainer = make_trainer(overrides, tmp_path)
    for x, y in trainer.train_loader.iterate(0):
        trainer.train_step(x, y)
        trainer.clock.step += 1
        if trainer.clock.step >= steps:
            break
    return trainer


@pytest.mark.parametrize(("method", "bitwidth"), PAIRS, ids=[f"{m}-{b}" for m, b in PAIRS])
def test_exported_tensors_hold_only_levels(method, bitwidth, tmp_path):
    trainer = _trained(method, bitwidth, tmp_path)
    m = trainer.method
    exported = m.export(trainer.model)
    levels = set(m.levels_tuple)
    assert not any("parametrizations" in k for k in exported.state_dict())
    for path, name in m.targets:
        values = getattr(exported.get_submodule(path), name).detach()
        if getattr(m, "adaptive", False):  # ProxQuant's own ternary levels: {α₋, 0, α₊} per tensor
            assert (values[values > 0].unique().numel() <= 1) and (values[values < 0].unique().numel() <= 1)
        else:
            assert set(values.unique().tolist()) <= levels, (path, name)
    # The exported network is a plain copy: the trained one still works and is unchanged.
    x = next(iter(trainer.test_loader))[0]
    trainer.model.eval()
    trainer.model(x)
    exported.eval()
    assert exported(x).shape == (len(x), 10)
    assert trainer.select_by == "val/acc_exported"  # best checkpoint by the discrete accuracy


def test_layerwise_scale_and_scope(tmp_path):
    trainer = _trained(
        "md_tanh_s",
        "binary",
        tmp_path,
        "method.scope.layerwise_scale=true",
        "method.scope.first=false",
        "method.scope.last=false",
        "method.scope.bias=false",
    )
    m = trainer.method
    paths = {p for p, _ in m.targets}
    layers = [n for n, mod in trainer.model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    assert layers[0] not in paths and layers[-1] not in paths and all(n == "weight" for _, n in m.targets)
    exported = m.export(trainer.model)
    for path, name in m.targets:
        values = getattr(exported.get_submodule(path), name).detach().unique()
        scale = trainer.model.get_submodule(path).parametrizations[name][0].scale.detach()
        assert len(values) <= 2 and torch.allclose(values.abs(), scale.abs().expand_as(values))
    first = exported.get_submodule(layers[0]).weight
    assert len(first.unique()) > 3  # left in float


def _quantized_paths(overrides: list[str]) -> tuple[set[tuple[str, str]], list[str]]:
    cfg = compose(overrides)
    model = build(cfg.model, "model")
    method = build(cfg.method, "method")
    method.prepare(model)
    layers = [n for n, mod in model.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    return set(method.targets), layers


def test_first_and_last_are_separate_scope_flags():
    targets, layers = _quantized_paths(["method=md_tanh_s", "model=resnet18", "method.scope.last=false"])
    assert (layers[0], "weight") in targets and (layers[-1], "weight") not in targets
    targets, layers = _quantized_paths(["method=md_tanh_s", "model=resnet18", "method.scope.first=false"])
    assert (layers[0], "weight") not in targets and (layers[-1], "weight") in targets


def test_pq_star_scope_is_the_md_papers():
    """Table 1 (binary) PQ*: biases, the fully-connected layers and shortcuts in float, the first
    conv quantized; Table 5 (ternary) PQ*: the first conv, the fully-connected layers and shortcuts
    in float. VGG-16 has three FC layers (as md-bnn's): all three stay float."""
    for extra in ([], ["bitwidth=ternary"]):
        targets, _ = _quantized_paths(["method=pq_star", "model=vgg16", *extra])
        model = build(compose(["model=vgg16"]).model, "model")
        fcs = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
        assert len(fcs) == 3 and not {p for p, _ in targets} & set(fcs), extra
    targets, layers = _quantized_paths(["method=pq_star", "model=vgg16"])  # conv biases
    assert (layers[0], "weight") in targets and not any(n == "bias" for _, n in targets)
    targets, layers = _quantized_paths(["method=pq_star", "model=vgg16", "bitwidth=ternary"])
    names = {p for p, _ in targets}
    assert layers[0] not in names and layers[-1] not in names and any(n == "bias" for _, n in targets)
    targets, layers = _quantized_paths(["method=pq_star", "model=resnet18"])
    assert not any("downsample" in p for p, _ in targets) and any("downsample" in n for n in layers)
    for table in ("md_t1", "md_t5"):
        cfg = compose([f"experiment={table}_cifar10_vgg16", "method=pq_star"])
        scope = cfg.method.scope
        assert (scope.first, scope.fc, scope.shortcut) == (table == "md_t1", False, False), table
        assert scope.bias is False or table == "md_t5"
        method = build(cfg.method, "method")
        method.prepare(build(cfg.model, "model"))
        assert not any(p.startswith("classifier.") for p, _ in method.targets), table


def test_fc_scope_flag_keeps_every_linear_layer_in_float():
    targets, layers = _quantized_paths(["method=md_tanh_s", "model=vgg16", "method.scope.fc=false"])
    model = build(compose(["model=vgg16"]).model, "model")
    kinds = {n: type(mod) for n, mod in model.named_modules()}
    assert {p for p, _ in targets} == {n for n in layers if kinds[n] is nn.Conv2d}
    targets, _ = _quantized_paths(["method=md_tanh_s", "model=vgg16", "method.scope.last=false"])
    assert {p for p, _ in targets if kinds[p] is nn.Linear} == {"classifier.1", "classifier.4"}


def test_quantized_methods_use_batch_norm_without_parameters():
    assert compose(["method=md_tanh_s"]).model.bn_affine is False
    assert compose(["method=float"]).model.bn_affine is True
    assert compose(["method=pq_star"]).model.bn_affine is True


@pytest.mark.parametrize(("method", "bitwidth"), sorted(UNSUPPORTED) + [("md_tanh_s", "w8a8")])
def test_unsupported_bitwidth_is_a_one_line_error(method, bitwidth):
    with pytest.raises(Exception) as info:
        build_method(method, bitwidth)
    err = info.value.__cause__ or info.value
    assert isinstance(err, ConfigError) and "\n" not in str(err) and "bitwidth=" in str(err)


def test_beta_schedule_logged_and_exact_across_resume(tmp_path):
    overrides = [
        "method=md_tanh_s",
        "bitwidth=binary",
        "schedule.epochs=2",
        "trainer.log_every=1",
        "schedule.beta.interval=3",
        "schedule.beta.scale=1.5",
    ]

    def make(run_dir, resume_step=None):
        return make_trainer(overrides, run_dir, RunLog(run_dir, resume_step))

    full = make(tmp_path / "full")
    full.fit()
    full.runlog.close()
    part = make(tmp_path / "part")
    part.fit(until=part.steps_per_epoch)  # one epoch, then "crash" after its checkpoint
    part.runlog.close()
    state = torch.load(tmp_path / "part" / "checkpoints" / "last.pt", weights_only=False)
    resumed = make(tmp_path / "part", state["clock"]["step"])
    resumed.load_state(state)
    assert resumed.method.beta.value == 1.5 ** (state["clock"]["step"] // 3)
    resumed.fit()
    resumed.runlog.close()
    log_full = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (tmp_path / "part" / "metrics.jsonl").read_text() == log_full
    import json

    betas = {
        r["step"]: r["method/beta"] for r in map(json.loads, log_full.splitlines()) if "method/beta" in r
    }
    assert betas and all(b == pytest.approx(1.5 ** (s // 3)) for s, b in betas.items())
    assert math.isclose(resumed.method.beta.value, full.method.beta.value)


def test_init_from_a_float_run(tmp_path):
    """Fine-tuning: the quantized run starts from another run's best float weights."""
    from quantlab.runs.components import load_init

    source = instantiate(compose([]).model)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"model": source.state_dict()}, tmp_path / "run" / "checkpoints" / "best.pt")
    target = instantiate(compose(["method=md_tanh_s", "bitwidth=binary", "+preset.bn_affine=true"]).model)
    load_init(target, str(tmp_path / "run"))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # A quantized method with init=keep starts its auxiliary variables at those weights.
    method = build_method("md_tanh_s", "binary", "method.init=keep")
    method.prepare(target)
    first = method.targets[0]
    torch.testing.assert_close(
        method.aux(target.get_submodule(first[0]), first[1]), source.get_submodule(first[0]).weight
    )
    with pytest.raises(ConfigError, match="init_from"):
        load_init(target, str(tmp_path / "nowhere"))


@pytest.mark.parametrize("method", METHODS)
def test_each_weight_quantizer_defaults_to_binary_and_the_command_line_wins(method):
    assert compose([f"method={method}"]).bitwidth.name == "binary"
    assert compose([f"method={method}", "bitwidth=ternary"]).bitwidth.name == "ternary"
    assert compose(["method=float"]).bitwidth.name == "w8a8"


def test_an_unsupported_pair_names_the_method_the_user_chose():
    with pytest.raises(Exception) as info:
        build_method("pq_star", "w8a8")
    err = info.value.__cause__ or info.value
    assert "method=pq_star supports bitwidth=binary or ternary only" in str(err)


@pytest.mark.parametrize("method", ["md_tanh_s", "bc"])
def test_binary_mobilenetv2_trains_every_tensor_and_exports_what_it_trains(method, tmp_path):
    """MD Table 2's smoke (binary MobileNetV2 on digits) is budget-bound, not broken: every quantized
    tensor (depthwise, pointwise, first conv, last FC) gets a gradient, the loss falls within a few
    steps, and at a large β the projected network computes what the exported one does."""
    trainer = make_trainer(
        ["experiment=digits_md", "model=mobilenetv2", f"method={method}", "schedule.batch_size=32"], tmp_path
    )
    m = trainer.method
    assert any(trainer.model.get_submodule(p).groups > 1 for p, _ in m.targets if p and "." in p)  # depthwise
    batches = iter(trainer.train_loader.iterate(0))
    x, y = next(batches)
    losses = []
    for step in range(6):
        losses.append(float(trainer.train_step(x, y).loss))
        if step == 0:
            assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in m.aux_tensors(trainer.model))
    assert losses[-1] < 0.9 * losses[0], losses
    m.beta.value = 1e30  # tanh(βw̃) = sign(w̃) even for the few w̃ within 1e-6 of 0
    exported = m.export(trainer.model)
    with torch.no_grad():  # batch statistics in both (8 steps leave the running ones far from settled)
        torch.testing.assert_close(trainer.model(x), exported.train()(x))
