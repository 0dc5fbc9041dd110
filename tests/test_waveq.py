"""WaveQ's sinusoidal regularizer, learnable bit-widths and the DoReFa export (Eqs. B.1, B.2)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from quantlab.errors import ConfigError
from quantlab.methods.waveq import WaveQ, waveq_step, waveq_term
from quantlab.quant.dorefa import dorefa_levels, dorefa_quantize, quantize_unit
from tests.conftest import yaml_method


def _on_levels(x: torch.Tensor, levels: torch.Tensor, atol: float = 1e-6) -> bool:
    """Every entry within atol of one of the levels (float rounding of 2j/(2^b − 1) − 1)."""
    return bool(((x.reshape(-1, 1) - levels.reshape(1, -1)).abs().min(1).values <= atol).all())


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)
    )


@pytest.mark.parametrize("bits", range(1, 9))
def test_waveq_term_is_zero_exactly_on_the_dorefa_levels(bits):
    levels = dorefa_levels(bits, torch.float64)
    b = torch.tensor(float(bits), dtype=torch.float64)
    per_level = torch.stack([waveq_term(q.reshape(1), b) for q in levels])
    assert per_level.max() < 1e-20
    # and nowhere else: midpoints between levels are the maxima (sin² = 1)
    mids = (levels[1:] + levels[:-1]) / 2
    at_mids = torch.stack([waveq_term(m.reshape(1), b) for m in mids])
    torch.testing.assert_close(at_mids, torch.ones_like(at_mids))
    # the public code's form: step = 1/(2^B − 0.5), shift = step/2, with its B = our b − 1
    assert float(waveq_step(b)) == pytest.approx(1 / (2 ** (bits - 1) - 0.5))


def test_waveq_gradient_with_respect_to_the_bit_width_matches_finite_differences():
    torch.manual_seed(0)
    u = torch.rand(500, dtype=torch.float64) * 2 - 1
    for b0 in (1.3, 2.7, 4.2, 7.9):
        b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(waveq_term(u, b), b)
        h = 1e-6
        plus, minus = (torch.tensor(b0 + s * h, dtype=torch.float64) for s in (1, -1))
        fd = (waveq_term(u, plus) - waveq_term(u, minus)) / (2 * h)
        assert float(grad) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_dorefa_outputs_lie_on_the_levels_of_eq_b1(bits):
    torch.manual_seed(bits)
    w = torch.randn(64, 9) * 0.3
    q = dorefa_quantize(w, bits)
    levels = dorefa_levels(bits)
    assert len(levels) == 2**bits and levels[0] == -1 and levels[-1] == 1
    assert _on_levels(q, levels) and len(q.unique()) <= 2**bits
    assert q.abs().max() == 1  # the largest |tanh(w)| maps to ±1
    # Eq. B.1 written out, and quantize_b = torch's fake-quantize on [0, 1] with 2^b − 1 steps
    t = torch.tanh(w)
    x = t / (2 * t.abs().max()) + 0.5
    reference = torch.fake_quantize_per_tensor_affine(x, 1.0 / (2**bits - 1), 0, 0, 2**bits - 1)
    torch.testing.assert_close(quantize_unit(x, bits), reference)
    torch.testing.assert_close(q, 2 * reference - 1)
    torch.testing.assert_close(dorefa_quantize(w, bits, 0.25), 0.25 * q)  # Eq. B.2: w_q = c·w_qo
    with pytest.raises(ValueError, match="bits=0"):
        dorefa_quantize(w, 0)


def test_reparametrization_keeps_the_network_and_the_export_holds_dorefa_levels():
    net = _net()
    x = torch.randn(6, 1, 4, 4)
    net.eval()
    before = net(x)
    method = yaml_method("waveq", init_bits=5.4, min_bits=2, max_bits=8)
    method.prepare(net)
    torch.testing.assert_close(net(x), before)  # α·tanh(v)/max|tanh v| reproduces w at the start
    params = method._parametrizations(net)
    with torch.no_grad():
        params[1].bits.fill_(2.6)
    exported = method.export(net)
    for path, p, bits in zip(method.layers, params, (5, 3), strict=True):
        w = exported.get_submodule(path).weight
        assert _on_levels(w / p.scale, dorefa_levels(bits))
        assert len(w.unique()) <= 2**bits
    report = method.report(net)
    assert report["bits"] == {"0": 5, "4": 3}
    assert report["bits_continuous"]["4"] == pytest.approx(2.6)
    sizes = (36, 192)
    assert report["weighted_bits"] == pytest.approx((5 * sizes[0] + 3 * sizes[1]) / sum(sizes))


def test_weights_on_the_grid_export_unchanged_and_have_zero_penalty():
    net = _net()
    method = yaml_method("waveq", init_bits=3, learn_bits=False, bit_strength=0.03, strength=1.0, epochs=10)
    method.prepare(net)
    with torch.no_grad():  # move every u onto the 3-bit levels: v = atanh(tanh(1)·q) for q on the levels
        for path in method.layers:
            v = net.get_submodule(path).parametrizations.weight.original
            q = dorefa_quantize(v, 3)
            v.copy_(torch.atanh(torch.tanh(torch.tensor(1.0)) * q))
    terms = method.penalty(net, torch.tensor(0.0), None)
    assert float(terms["waveq"].detach()) < 1e-10 and "bits" not in terms  # fixed bits: no λ_β term
    exported = method.export(net)
    for path in method.layers:
        torch.testing.assert_close(exported.get_submodule(path).weight, net.get_submodule(path).weight)


def test_bits_are_learned_clamped_and_kept_out_of_weight_decay():
    from omegaconf import OmegaConf

    net = _net()
    method = yaml_method("waveq", init_bits=4.0, min_bits=3, max_bits=6, bits_lr=0.5)
    method.prepare(net)
    schedule = OmegaConf.create(
        {"optimizer": {"_target_": "quantlab.optim.optimizer", "_partial_": True, "name": "sgd", "lr": 0.1}}
    )
    schedule.optimizer.weight_decay = 0.1
    opt = method.optimizer(net, schedule)
    own = opt.param_groups[-1]
    assert own["weight_decay"] == 0 and own["lr"] == 0.5 and len(own["params"]) == 4  # 2 scales, 2 bit-widths
    terms = method.penalty(net, torch.tensor(0.0), None)
    sum(terms.values()).backward()
    bits = [p.bits for p in method._parametrizations(net)]
    assert all(b.grad is not None for b in bits)
    opt.step()
    with torch.no_grad():
        bits[0].fill_(1.0)
        bits[1].fill_(9.0)
    logged = method.on_step(net, 0, 0)
    assert [float(b) for b in bits] == [3.0, 6.0]
    assert float(logged["bits/0"]) == 3.0 and float(logged["bits_mean"]) == 4.5
    fixed = yaml_method("waveq", init_bits=4.0, learn_bits=False)
    fixed_net = _net_prepared(fixed)
    assert all(not p.bits.requires_grad for p in fixed._parametrizations(fixed_net))
    assert len(fixed.own_parameters(fixed_net)[0]) == 2  # the scales only


def _net_prepared(method: WaveQ) -> nn.Sequential:
    net = _net()
    method.prepare(net)
    return net


def test_lambda_q_ramp_is_the_public_codes():
    """λ_q = ½(1 + tanh((epoch − 0.2E)/20)) for E epochs, times λ_w."""
    method = yaml_method("waveq", epochs=100, strength=0.5)
    net = _net_prepared(method)
    for epoch in (0, 20, 50, 99):
        expected = 0.5 * 0.5 * (1 + math.tanh((epoch - 20) / 20))
        assert method.on_step(net, 0, epoch)["lambda"] == pytest.approx(expected)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_the_regularizers_gradient_grows_as_2_to_the_bits(bits):
    """∂/∂u sin²(π(u + s/2)/s) = (π/s)·sin(2π(u + s/2)/s): its largest value is π/s = π(2^(b−1) − ½),
    and its curvature at the levels 2π²/s². One strength for every b weighs the regularizer ~2x more
    against the loss per extra bit (why the digits smoke's old strength 3 froze the 4- and 5-bit runs)."""
    s = float(waveq_step(torch.tensor(float(bits))))
    assert 1 / s == pytest.approx(2 ** (bits - 1) - 0.5)
    u = torch.linspace(-1, 1, 200001, dtype=torch.float64, requires_grad=True)
    step = waveq_step(torch.tensor(float(bits), dtype=torch.float64))
    (torch.sin(math.pi * (u + 0.5 * step) / step).square().sum()).backward()
    assert float(u.grad.abs().max()) == pytest.approx(math.pi / s, rel=1e-6)


def test_digits_waveq_ramp_has_the_public_codes_shape_over_its_epochs():
    """The public code's λ_q over 100 epochs (center 0.2E = 20, width 20) has the shape
    ½(1 + tanh((t − 0.2)/0.2)) in t = epoch/E; digits_waveq's 30 epochs keep it (width 0.2E = 6)
    instead of starting at 35 % (width 20 over 30 epochs)."""
    from quantlab.runs.components import build
    from quantlab.runs.config import compose

    cfg = compose(["experiment=digits_waveq", "method=waveq"])
    epochs = int(cfg.schedule.epochs)
    method = build(cfg.method, "method")
    net = _net_prepared(method)
    strength = float(cfg.method.strength)
    for t in (0.0, 0.1, 0.2, 0.5, 0.9):
        public = 0.5 * (1 + math.tanh((t * 100 - 20) / 20))
        got = method.on_step(net, 0, round(t * epochs))["lambda"] / strength
        assert got == pytest.approx(public, rel=1e-9), t
    assert compose(["method=waveq"]).method.ramp_width == 20.0  # the public code's, outside the preset


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="method.init_bits"):
        yaml_method("waveq", init_bits=12, max_bits=8)
    with pytest.raises(ConfigError, match="method.min_bits"):
        yaml_method("waveq", min_bits=0)
    with pytest.raises(ConfigError, match="method.bits_lr"):
        yaml_method("waveq", bits_lr=-1)


def test_train_writes_learned_bits_to_results_and_tensorboard(tmp_path):
    from tests.conftest import FAST, cli_env, quantlab

    run = tmp_path / "run"
    quantlab(
        "train",
        "method=waveq",
        *FAST,
        "method.strength=0.03",
        "method.bits_lr=0.05",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        env=cli_env(tmp_path),
    )
    results = json.loads((run / "results.json").read_text())
    bits = results["method"]["bits"]
    assert set(bits) == {"0", "3", "7", "12"} and all(2 <= b <= 8 for b in bits.values())
    assert results["metrics"]["method/mean_bits"] == pytest.approx(sum(bits.values()) / 4)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("method/bits/7" in x for x in lines) and any("report/bits/7" in x for x in lines)
    assert results["metrics"]["test/acc_exported"] > 50
