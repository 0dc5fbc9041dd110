"""The PTQ engine: activation grids, ranges (β ± nγ, min–max, percentile, MSE), sites, the sweep, KL."""

from __future__ import annotations

import copy

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from quantlab.errors import ConfigError
from quantlab.quant.ranges import RangeObserver, bn_channel_range, mse_range, percentile_range
from quantlab.quant.sites import ActQuant
from quantlab.quant.sweep import PTQSettings, PTQSweep, Variant, evaluate_variants, plan, run_sweep
from quantlab.quant.uniform import activation_grid, fake_quantize, fake_quantize_activation, quantize_tensor
from quantlab.runs.config import compose, ptq_defaults


def _net(affine: bool = True, seed: int = 0) -> nn.Sequential:
    """conv → BN → ReLU → conv → BN → ReLU → pool → flatten → linear, with non-trivial BN statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8, affine=affine),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16, affine=affine),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            if affine:
                m.weight.data.uniform_(-2, 2)  # negative γ too: the range uses |γ|
                m.bias.data.uniform_(-1, 1)
    return net.eval()


def _batches(n: int = 4, size: int = 16, seed: int = 1, classes: int = 10):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


# -- activation grids ----------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    bits=st.integers(2, 16),
    symmetric=st.booleans(),
    lo=st.floats(-5, 0),
    hi=st.floats(0.01, 5),
    nonneg=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_activation_grid_equals_reference_formula(bits, symmetric, lo, hi, nonneg, seed):
    """torch's fused kernel on our grid = (clamp(round(x/s) + z, q_min, q_max) − z)·s; ≤ 2^b values;
    idempotent; the unsigned grid for non-negative ranges."""
    lo = 0.0 if nonneg else min(lo, -1e-3)
    x = torch.randn(2000, generator=torch.Generator().manual_seed(seed)) * 3
    grid = activation_grid(lo, hi, bits, symmetric)
    scale, zp, q_min, q_max = grid
    q = fake_quantize_activation(x, grid)
    ref = fake_quantize(x, torch.tensor(scale), torch.tensor(float(zp)), q_min, q_max)
    assert torch.equal(q, ref)
    assert len(q.unique()) <= 2**bits
    torch.testing.assert_close(fake_quantize_activation(q, grid), q, rtol=0, atol=1e-6 * scale + 1e-12)
    if symmetric:
        assert zp == 0
        assert (q_min, q_max) == (
            (0, 2**bits - 1) if nonneg else (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        )


def test_activation_grid_one_bit():
    x = torch.tensor([-3.0, -0.1, 0.0, 0.2, 0.7, 4.0])
    unsigned = fake_quantize_activation(x, activation_grid(0.0, 2.0, 1, True))
    assert set(unsigned.tolist()) <= {0.0, 2.0}  # q ∈ {0, 1}, s = hi
    signed = fake_quantize_activation(x, activation_grid(-2.0, 2.0, 1, True))
    assert torch.equal(signed, torch.where(x >= 0, 1.0, -1.0))  # sign · max|range| / 2


def test_activation_bits_out_of_range():
    for bits in (0, 17):
        with pytest.raises(ConfigError, match="act_bits"):
            activation_grid(-1.0, 1.0, bits, True)


# -- ranges --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_bn_ranges_equal_beta_plus_minus_n_gamma(affine):
    bn = _net(affine)[1]
    lo, hi = bn_channel_range(bn, 6.0)
    gamma = bn.weight.detach() if affine else torch.ones(8)
    beta = bn.bias.detach() if affine else torch.zeros(8)
    torch.testing.assert_close(lo, beta - 6.0 * gamma.abs(), rtol=0, atol=0)
    torch.testing.assert_close(hi, beta + 6.0 * gamma.abs(), rtol=0, atol=0)


@pytest.mark.parametrize("fold", [True, False])
@pytest.mark.parametrize("placement", ["input", "output"])
def test_site_ranges_from_batch_norm(fold, placement):
    """Each site's range is [min_c(β−n|γ|), max_c(β+n|γ|)] of its BN, clamped by the ReLU on the way."""
    net = _net()
    sweep = PTQSweep(net, ptq_defaults(bn_n=3.0, act_placement=placement), fold=fold)
    bns = {"0": net[1], "3": net[4]}
    checked = 0
    for site in sweep.sites:
        if placement == "input":
            # conv 3 reads ReLU(BN 1); the linear reads flatten(pool(ReLU(BN 4))); conv 0 the image
            source = {"3": net[1], "8": net[4]}.get(site.layer)
            clamp = True
        else:
            source = bns.get(site.layer)  # the linear's output is the logits: no site
            clamp = False
        if source is None:
            assert not site.data_free
            continue
        lo_c, hi_c = bn_channel_range(source, 3.0)
        lo, hi = float(lo_c.min()), float(hi_c.max())
        expect = (max(lo, 0.0), max(hi, 0.0)) if clamp else (lo, hi)
        assert sweep.site_range(site, 8) == pytest.approx(expect, abs=0)
        checked += 1
    assert checked == 2
    assert [s.layer for s in sweep.sites] == (["0", "3", "8"] if placement == "input" else ["0", "3"])


def test_minmax_calibration_sees_every_value():
    net = _net()
    batches = _batches(3)
    sweep = PTQSweep(net, ptq_defaults(act_range="minmax", calibration_batches=2), fold=True)
    assert sweep.calibrate(batches) == 2
    seen = {}
    hooks = [
        net[i].register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0].clone()))
        for i in (0, 3, 8)
    ]
    with torch.no_grad():
        for x, _ in batches[:2]:
            net(x)
    for h in hooks:
        h.remove()
    for site, index in zip(sweep.sites, (0, 3, 8), strict=True):
        values = torch.cat([t.flatten() for t in seen[index]])
        assert sweep.site_range(site, 4) == pytest.approx(
            (float(values.min()), float(values.max())), rel=1e-5
        )


def test_percentile_and_mse_ranges():
    g = torch.Generator().manual_seed(0)
    values = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    values[:5] = torch.tensor([40.0, -35.0, 30.0, 25.0, -50.0])  # outliers
    lo, hi = percentile_range(values, 99.9)
    assert lo == pytest.approx(float(torch.quantile(values, 0.001)))
    assert hi == pytest.approx(float(torch.quantile(values, 0.999)))
    clip = mse_range(values, 4, symmetric=True)
    err = {}
    for name, rng in {"mse": clip, "minmax": (float(values.min()), float(values.max()))}.items():
        q = fake_quantize_activation(values, activation_grid(*rng, 4, True))
        err[name] = float((q - values).square().mean())
    assert max(abs(clip[0]), clip[1]) < 20 and err["mse"] < 0.2 * err["minmax"]
    # the search is exhaustive over its grid: no candidate does better
    for i in range(1, 101):
        a = i / 100
        q = fake_quantize_activation(values, activation_grid(a * values.min(), a * values.max(), 4, True))
        assert float((q - values).square().mean()) >= err["mse"] - 1e-9
    del g


def test_observer_subsample_is_bounded_and_exact_in_min_max():
    obs = RangeObserver(max_samples=1000, per_batch=300, seed=0)
    for i in range(5):
        obs.update(torch.arange(10_000.0) + i)
    assert obs.kept == 1000 and obs.values().numel() == 1000
    assert obs.minmax() == (0.0, 10_003.0)


# -- the quantized networks ------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["input", "output"])
@pytest.mark.parametrize("act_range", ["bn", "minmax", "percentile", "mse"])
def test_quantized_network_is_on_the_grid(placement, act_range):
    """Weights: ≤ 2^b values per output channel; every quantized activation: ≤ 2^a values."""
    sweep = PTQSweep(_net(), ptq_defaults(act_range=act_range, act_placement=placement), fold=True)
    sweep.calibrate(_batches())
    model = sweep.build(Variant(3, 4))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert all(len(row.unique()) <= 2**3 for row in m.weight.detach().flatten(1))
    outputs = []
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.register_forward_hook(lambda mod, a, out: outputs.append(out.detach()))
    with torch.no_grad():
        model(_batches(1, seed=5)[0][0])
    assert len(outputs) == len(sweep.sites) > 0
    assert all(len(o.unique()) <= 2**4 for o in outputs)


def test_weights_only_pair_leaves_activations_float():
    net = _net()
    sweep = PTQSweep(net, ptq_defaults(act_range="minmax"), fold=False)
    sweep.calibrate(_batches())
    model = sweep.build(Variant(8, None))
    manual = copy.deepcopy(net)
    with torch.no_grad():
        for m in manual.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(quantize_tensor(m.weight, 8, True, axis=0))
        x = _batches(1)[0][0]
        torch.testing.assert_close(model(x), manual(x), rtol=1e-5, atol=1e-5)


def test_kl_is_zero_for_identical_models_and_matches_its_definition():
    net = _net()
    batches = _batches(3, classes=10)
    other = _net(seed=3)
    scores, ref = evaluate_variants(
        {Variant(32, None): copy.deepcopy(net), Variant(1, 1): other}, batches, net, top5=True
    )
    assert scores[Variant(32, None)]["kl"] == 0.0
    assert scores[Variant(32, None)]["acc"] == ref["acc"]
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        p, q = net(x).double().softmax(1), other(x).double().softmax(1)
    kl = float((p * (p.log() - q.log())).sum(1).mean())
    assert scores[Variant(1, 1)]["kl"] == pytest.approx(kl, rel=1e-9)
    assert {"acc", "acc5", "loss", "kl"} <= set(scores[Variant(1, 1)])


def test_cached_reference_must_match_the_loader():
    net = _net()
    batches = _batches(2)
    cached = [(net(x).detach(), y) for x, y in batches]
    scores, _ = evaluate_variants({Variant(8, 8): copy.deepcopy(net)}, batches, cached, top5=False)
    assert scores[Variant(8, 8)]["kl"] == 0.0
    shuffled = [cached[1], cached[0]]
    with pytest.raises(RuntimeError, match="order"):
        evaluate_variants({Variant(8, 8): net}, batches, shuffled, top5=False)


def test_sixteen_bits_is_nearly_float_and_low_bits_are_not():
    net = _net()
    batches = _batches(4)
    result = run_sweep(net, [(16, 16), (2, 2)], ptq_defaults(act_range="minmax"), batches, batches)
    by_pair = {e["pair"]: e for e in result.entries}
    assert by_pair["w16a16"]["kl"] < 1e-6
    assert by_pair["w2a2"]["kl"] > 100 * by_pair["w16a16"]["kl"]
    assert result.reference["acc"] >= 0 and result.timing["calibration_batches"] == 4


def test_bn_ranges_need_no_data_when_every_site_has_a_batch_norm():
    sweep = PTQSweep(_net(), ptq_defaults(quantize_network_input=False), fold=True)
    assert sweep.needs_data() == []
    assert sweep.calibrate(iter(())) == 0  # data-free
    sweep.build(Variant(4, 4))


@pytest.mark.parametrize("model", ["resnet18", "mobilenetv2", "vgg_small", "lenet5", "mlp", "alexnet_bn"])
def test_every_model_can_be_swept(model):
    cfg = compose([f"model={model}", "dataset=synthetic"])
    net = instantiate(cfg.model).eval()
    size = 32 if model != "alexnet_bn" else 64
    x = torch.randn(4, 3, size, size)
    result = run_sweep(
        net,
        [(8, 8)],
        ptq_defaults(),
        [(x, torch.zeros(4, dtype=torch.long))],
        [(x, torch.zeros(4, dtype=torch.long))],
    )
    assert result.sites["total"] >= 3 and result.entries[0]["kl"] < 0.05


# -- higher bits: re-quantize or ignore the higher-order bits ----------------------------------------------


def test_plan_modes():
    pairs = [(8, 4), (4, 4), (8, 8), (8, None)]
    best = plan(pairs, (4, 4), "best")
    assert [set(p.modes) for p in best] == [
        {"requantize", "ignore"},
        {"requantize"},
        {"requantize", "ignore"},
        {"requantize", "ignore"},
    ]
    assert best[2].modes["ignore"] == Variant(4, 4) and best[3].modes["ignore"] == Variant(4, None)
    assert all(set(p.modes) == {"requantize"} for p in plan(pairs, (4, 4), "requantize"))
    assert all(set(p.modes) == {"requantize"} for p in plan(pairs, None, "best"))
    assert plan(pairs, (4, 4), "ignore")[0].modes == {"ignore": Variant(4, 4)}


def test_ignoring_higher_bits_keeps_the_trained_grid_exactly():
    """A network whose weights lie on a 4-bit grid, evaluated at 8 bits: "ignore" keeps the weights
    bit for bit (the 4-bit quantizer is idempotent), "requantize" moves them to the 8-bit grid."""
    net = _net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(quantize_tensor(m.weight, 4, True, axis=0))
    batches = _batches(2)
    s = ptq_defaults(trained_bits=[4, None], act_range="minmax")
    sweep = PTQSweep(net, s, fold=False)
    ignore = sweep.build(Variant(4, None))
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    kept = [m.weight for m in ignore.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(torch.equal(a, b) for a, b in zip(weights, kept, strict=True))
    result = run_sweep(net, [(8, None)], s, batches, batches, fold=False)
    entry = result.entries[0]
    assert set(entry["modes"]) == {"requantize", "ignore"}
    assert entry["modes"]["ignore"]["kl"] == 0.0  # exactly the trained network
    assert entry["acc"] == max(v["acc"] for v in entry["modes"].values())


# -- settings --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"act_range": "max"}, "ptq.act_range"),
        ({"act_placement": "middle"}, "ptq.act_placement"),
        ({"higher_bits": "all"}, "ptq.higher_bits"),
        ({"trained_bits": [4]}, "ptq.trained_bits"),
        ({"trained_bits": [20, 4]}, "ptq.trained_bits"),
        ({"calibration_batches": 0}, "ptq.calibration_batches"),
        ({"bn_n": -1}, "ptq.bn_n"),
        ({"percentile": 20}, "ptq.percentile"),
        ({"enabled": "yes"}, "ptq.enabled"),
        ({"colour": 1}, "ptq.colour"),
    ],
)
def test_settings_errors_name_the_field(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ptq_defaults(**change)


def test_a_ptq_config_without_a_setting_is_refused_naming_it():
    node = dict(compose([]).ptq)
    del node["bn_n"]
    with pytest.raises(ConfigError, match=r"^ptq\.bn_n: missing"):
        PTQSettings.from_config(node)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 16),
    symmetric=st.booleans(),
    lo=st.floats(-100, -1e-3),
    hi=st.floats(1e-3, 100),
    nonneg=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_fast_activation_path_equals_torch_kernel(bits, symmetric, lo, hi, nonneg, seed):
    """The in-place chain used at every site is bit for bit torch.fake_quantize_per_tensor_affine."""
    grid = activation_grid(0.0 if nonneg else lo, hi, bits, symmetric)
    if grid[2:] == (-1, 0):
        return  # 1-bit signed: sign · s, tested above
    x = torch.randn(3000, generator=torch.Generator().manual_seed(seed)) * (hi - lo) / 3
    x[:5] = torch.tensor([0.5, -0.5, 1.5, 2.5, -2.5]) * grid[0]  # ties: round half to even
    ref = torch.fake_quantize_per_tensor_affine(x, grid[0], grid[1], grid[2], grid[3])
    assert torch.equal(fake_quantize_activation(x, grid), ref)


def test_resnet_shortcut_shares_the_block_input_quantizer():
    """A block's first conv and its 1x1 shortcut read the same tensor: one quantizer, one range."""
    net = instantiate(compose(["model=resnet18", "dataset=synthetic"]).model).eval()
    sweep = PTQSweep(net, ptq_defaults(), fold=True)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    shortcuts = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and "downsample" in n]
    assert len(shortcuts) == 3 and len(sweep.sites) == len(layers) - len(shortcuts)
    model = sweep.build(Variant(8, None))
    inputs = {str(n.target): n.args[0] for n in model.graph.nodes if n.op == "call_module"}
    for name in shortcuts:
        conv1 = name.replace("downsample.0", "conv1")
        assert inputs[name] is inputs[conv1] and inputs[name].target.startswith("act_in_")


def test_one_operator_registry_serves_the_sites_and_the_export():
    """quant.operators: ReLU6 is a clamp to [0, 6] (its own entry before Hardtanh's in the MRO); a
    Hardtanh or LeakyReLU ends the walk to a batch norm; `view` keeps the range but has no ONNX form,
    and the export names it."""
    import math

    import torch.nn.functional as F
    from torch import nn
    from torch.fx import symbolic_trace

    from quantlab.quant.onnx_graph import NotExportable, check_exportable
    from quantlab.quant.operators import operator_of

    net = symbolic_trace(nn.Sequential(nn.ReLU6(), nn.Hardtanh(), nn.LeakyReLU(), nn.ReLU(), nn.MaxPool2d(2)))
    modules = dict(net.named_modules())
    entries = [operator_of(n, modules) for n in net.graph.nodes if n.op == "call_module"]
    assert [(e.range, e.clamp) for e in entries] == [
        ("clamp", (0.0, 6.0)),
        ("other", None),
        ("other", None),
        ("clamp", (0.0, math.inf)),
        ("pass", None),
    ]
    assert all(e.onnx is not None for e in entries)

    class Viewed(nn.Module):
        def forward(self, x):
            return F.relu(x).view(2, -1)

    viewed = symbolic_trace(Viewed())
    (view,) = [n for n in viewed.graph.nodes if n.op == "call_method" and n.target == "view"]
    assert operator_of(view, {}).range == "pass" and operator_of(view, {}).onnx is None
    with pytest.raises(NotExportable, match="Tensor.view has no ONNX export"):
        check_exportable(viewed, torch.zeros(2, 3, 4, 4))
