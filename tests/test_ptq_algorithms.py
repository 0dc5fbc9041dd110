"""PTQ algorithms as plug-ins (issue 28): AdaRound, empirical bias correction, cross-layer
equalization, each checked against its defining property."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from quantlab.quant.adaround import (
    AdaRoundSettings,
    adaround_layer,
    beta_at,
    initial_v,
    rectified_sigmoid,
    regularizer,
)
from quantlab.quant.uniform import tensor_codes
from quantlab.runs.config import ptq_defaults

FAST = {"iterations": 300, "samples": 256}  # the CPU setting the tests use


def _settings(**given) -> AdaRoundSettings:
    return AdaRoundSettings.from_config({**ptq_defaults().adaround, **given})


# -- AdaRound ---------------------------------------------------------------------------------------------


def test_the_rectified_sigmoid_starts_at_the_fractional_part_and_the_regularizer_vanishes_on_the_grid():
    rest = torch.linspace(0.001, 0.999, 101)
    torch.testing.assert_close(rectified_sigmoid(initial_v(rest)), rest, atol=1e-5, rtol=0)
    assert float(regularizer(torch.tensor([0.0, 1.0, 1.0]), 2.0)) == 0.0
    assert float(regularizer(torch.tensor([0.5]), 2.0)) == pytest.approx(1.0)
    s = _settings(iterations=100, warm_start=0.2, beta_start=20, beta_end=2)
    assert (
        beta_at(19, s) is None and beta_at(20, s) == pytest.approx(20) and beta_at(100, s) == pytest.approx(2)
    )
    assert beta_at(60, s) == pytest.approx(11)  # linear


def _layer_and_data(seed: int):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(32, 16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(16, 32, generator=g) * 0.3)
    x = torch.randn(256, 32, generator=g)
    return layer, x


@pytest.mark.slow  # trains the digits network (CI's slow tests run it)
def test_learned_rounding_ends_on_the_grid(digits_network):
    """The trained network's classifier at 3 bits, with the paper's λ and β schedule (3000 steps at
    learning rate 10⁻²): every h(V) ends within 10⁻³ of 0 or 1, and the hard codes are ⌊W/s⌋ or
    ⌊W/s⌋ + 1 on the nearest grid."""
    from quantlab.quant.algorithms import layer_inputs
    from quantlab.quant.sweep import PTQSweep

    network, calibration, _ = digits_network
    sweep = PTQSweep(network, ptq_defaults(weight_rounding="adaround"), fold=True)
    sweep.calibrate(calibration)
    name, layer = [(n, m) for n, m in sweep.base.named_modules() if isinstance(m, nn.Linear)][-1]
    x = layer_inputs(sweep.base, name, sweep.images[:256])
    nearest = tensor_codes(layer.weight.detach(), 3, True, 0)
    codes, h = adaround_layer(layer, nearest, x, x, _settings(iterations=3000, lr=1e-2))
    on_grid = ((h < 1e-3) | (h > 1 - 1e-3)).float().mean()
    assert on_grid >= 0.99, float(on_grid)
    step = codes.q - torch.floor(layer.weight.detach() / nearest.scale[:, None])
    assert bool(((step == 0) | (step == 1) | (codes.q == nearest.q_min) | (codes.q == nearest.q_max)).all())


def test_at_beta_to_infinity_from_the_fractional_part_adaround_is_nearest():
    """V initialised from the fractional part, no step that moves it (lr 0) and β → ∞: the hard
    rounding 1[h(V) ≥ ½] is round-to-nearest; so are zero iterations."""
    layer, x = _layer_and_data(1)
    nearest = tensor_codes(layer.weight.detach(), 4, True, 0)
    for given in ({"lr": 0.0, "warm_start": 0.0, "beta_start": 1e6, "beta_end": 1e6}, {"iterations": 0}):
        codes, _ = adaround_layer(layer, nearest, x, x, _settings(**{"iterations": 50, **given}))
        assert torch.equal(codes.q, nearest.q), given


@pytest.fixture(scope="module")
def digits_network():
    """small_cnn trained on digits (30 epochs, as the default run) and its data."""
    import tempfile
    from pathlib import Path

    from quantlab.data import make_loader
    from quantlab.runs.components import trainer_for

    logging.disable(logging.INFO)
    try:
        trainer = trainer_for(["schedule.epochs=30"], Path(tempfile.mkdtemp()) / "run")
        trainer.fit()
    finally:
        logging.disable(logging.NOTSET)
    data = trainer.data
    network = trainer.method.export(trainer.model).eval()
    test = make_loader(data.test, 256, train=False)
    calibration = make_loader(data.calibration, 256, train=True, seed=0)
    return network, calibration, test


def _sweep(network, pairs, calibration, test, **given):
    from quantlab.quant.sweep import run_sweep

    return {e["pair"]: e for e in run_sweep(network, pairs, ptq_defaults(**given), calibration, test).entries}


@pytest.mark.slow  # trains the digits network (CI's slow tests run it)
def test_adaround_beats_nearest_on_a_trained_digits_network(digits_network):
    """KL(float ‖ quant) and top-1 at w3a8 and w2a8 (the fast setting)."""
    pairs = [(3, 8), (2, 8)]
    nearest = _sweep(*digits_network[:1], pairs, *digits_network[1:])
    learned = _sweep(
        *digits_network[:1],
        pairs,
        *digits_network[1:],
        weight_rounding="adaround",
        adaround={**ptq_defaults().adaround, **FAST},
    )
    for pair in ("w3a8", "w2a8"):
        assert learned[pair]["kl"] < nearest[pair]["kl"], (pair, learned[pair], nearest[pair])
        assert learned[pair]["acc"] >= nearest[pair]["acc"], (pair, learned[pair], nearest[pair])
    assert learned["w2a8"]["acc"] > nearest["w2a8"]["acc"] + 10


# -- bias correction --------------------------------------------------------------------------------------


@pytest.mark.slow  # trains the digits network (CI's slow tests run it)
def test_bias_correction_zeroes_each_layers_mean_output_error(digits_network):
    """On the calibration images, every layer's per-channel mean output of the corrected w4a8
    network equals the float network's (to float rounding); without the correction it does not."""
    from quantlab.quant.algorithms import layer_inputs
    from quantlab.quant.sweep import PTQSweep, Variant

    network, calibration, _ = digits_network

    def mean_errors(**given):
        sweep = PTQSweep(network, ptq_defaults(**given), fold=True)
        sweep.calibrate(calibration)
        images = sweep.images if len(sweep.images) else torch.cat([x for x, _ in calibration][:8])
        model = sweep.build(Variant(4, 8))
        errors = {}
        for name, layer in model.named_modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                dims = [0, 2, 3] if isinstance(layer, nn.Conv2d) else [0]
                have = layer(layer_inputs(model, name, images)).mean(dims)
                base = dict(sweep.base.named_modules())[name]
                want = base(layer_inputs(sweep.base, name, images)).mean(dims)
                errors[name] = float((have - want).abs().max() / want.abs().max())
        return errors

    corrected, plain = mean_errors(bias_correction=True), mean_errors()
    assert max(corrected.values()) < 1e-4, corrected
    assert max(plain.values()) > 1e-3, plain


# -- cross-layer equalization ---------------------------------------------------------------------------


def _untrained(model: str) -> nn.Module:
    from quantlab.runs.components import build
    from quantlab.runs.config import compose

    torch.manual_seed(0)
    net = build(compose([f"model={model}"]).model).eval()
    with torch.no_grad():  # batch norm statistics that are not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("model", ["small_cnn", "mobilenetv2"])
def test_equalization_keeps_the_float_function_and_equalizes_the_ranges(model):
    from quantlab.quant.equalize import _input_range, _output_range, equalization_pairs, equalize
    from quantlab.quant.fold import fold_batch_norm

    folded_net, folded = fold_batch_norm(_untrained(model))
    x = torch.randn(8, 1, 8, 8)
    before = folded_net(x)
    equalized = copy.deepcopy(folded_net)
    pairs = equalize(equalized, copy.deepcopy(folded), iterations=50, tolerance=1e-9)
    assert pairs == equalization_pairs(folded_net) and len(pairs) >= (10 if model == "mobilenetv2" else 2)
    if model == "mobilenetv2":  # through depthwise blocks: pointwise → depthwise → pointwise
        modules = dict(equalized.named_modules())
        assert any(modules[b].groups > 1 for _, b in pairs) and any(modules[a].groups > 1 for a, _ in pairs)
    torch.testing.assert_close(equalized(x), before, atol=1e-5, rtol=1e-5)
    modules = dict(equalized.named_modules())
    for a, b in pairs[-1:]:  # the last pair was equalized last: its ranges are equal
        torch.testing.assert_close(_output_range(modules[a]), _input_range(modules[b]), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_equalization_improves_per_tensor_ptq_of_a_digits_mobilenetv2(tmp_path):
    """Per-tensor weights (where CLE matters): top-1 at w8a8 and the weight-only KL at w8afp."""
    from quantlab.data import make_loader
    from quantlab.runs.components import trainer_for

    trainer = trainer_for(["model=mobilenetv2", "schedule.epochs=5"], tmp_path / "run")
    trainer.fit()
    network = trainer.method.export(trainer.model).eval()
    test = make_loader(trainer.data.test, 256, train=False)
    calibration = make_loader(trainer.data.calibration, 256, train=True, seed=0)
    pairs = [(8, 8), (8, None)]
    plain = _sweep(network, pairs, calibration, test, weight_per_channel=False)
    equalized = _sweep(network, pairs, calibration, test, weight_per_channel=False, equalize=True)
    assert equalized["w8a8"]["acc"] > plain["w8a8"]["acc"], (equalized, plain)
    assert equalized["w8afp"]["kl"] < plain["w8afp"]["kl"], (equalized, plain)


# -- the plug point ---------------------------------------------------------------------------------------


def test_an_algorithm_is_chosen_by_its_setting_and_unknown_ones_are_named():
    from quantlab.errors import ConfigError
    from quantlab.quant.algorithms import ROUNDINGS

    assert set(ROUNDINGS) == {"nearest", "adaround"}
    with pytest.raises(ConfigError, match="ptq.weight_rounding='floor': must be one of nearest, adaround"):
        ptq_defaults(weight_rounding="floor")
    with pytest.raises(ConfigError, match="ptq.adaround.iterations"):
        ptq_defaults(adaround={**ptq_defaults().adaround, "iterations": -1})
    with pytest.raises(ConfigError, match="ptq.adaround.momentum: unknown setting"):
        ptq_defaults(adaround={**ptq_defaults().adaround, "momentum": 0.9})


def test_bench_ptq_prices_each_algorithm_against_a_plain_sweep():
    from quantlab.commands.bench_ptq import parse_args, run

    args = parse_args(
        ["--model", "small_cnn", "--pairs", "4,8", "--rounds", "1", "--test-size", "256", "--image-size", "8"]
        + ["--batch-size", "64", "--algorithms", "nearest", "adaround", "bias_correction", "equalize"]
        + ["--adaround-iterations", "20"]
    )
    rows = {r["algorithm"]: r for r in run(args)}
    assert set(rows) == {"nearest", "adaround", "bias_correction", "equalize"}
    assert rows["nearest"]["over_nearest"] == pytest.approx(1.0)
    assert rows["adaround"]["over_nearest"] > 1.0  # it learns, layer by layer
    assert all(r["sweep_over_k_evals"] > 0 for r in rows.values())
