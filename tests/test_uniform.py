"""Uniform quantizers against torch's fake-quantize kernels, and batch-norm folding."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st

from quantlab.errors import ConfigError
from quantlab.quant.fold import fold_batch_norm
from quantlab.quant.uniform import fake_quantize, int_range, qparams, quantize_tensor, quantize_tensor_ste
from quantlab.runs.config import compose


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8, 12, 16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_equals_torch_per_tensor(bits, symmetric):
    torch.manual_seed(bits)
    x = torch.randn(4096) * 3 + (0 if symmetric else 1.5)
    scale, zp = qparams(x.min(), x.max(), bits, symmetric)
    q_min, q_max = int_range(bits, symmetric)
    ours = fake_quantize(x, scale, zp, q_min, q_max)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), q_min, q_max)
    assert torch.equal(ours, ref)
    assert torch.equal(quantize_tensor(x, bits, symmetric), ref)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_equals_torch_per_channel(bits, symmetric):
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 2, 16)[:, None, None, None]
    ours = quantize_tensor(w, bits, symmetric, axis=0)
    scale, zp = qparams(w.amin((1, 2, 3)), w.amax((1, 2, 3)), bits, symmetric)
    q_min, q_max = int_range(bits, symmetric)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp.to(torch.int32), 0, q_min, q_max)
    assert torch.equal(ours, ref)


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(1, 8),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
    seed=st.integers(0, 10_000),
    shift=st.floats(-2, 2),
)
def test_grid_properties(bits, symmetric, per_channel, seed, shift):
    """At most 2^bits values (per channel where per channel), and idempotent."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 50, generator=g) + shift
    axis = 0 if per_channel else None
    q = quantize_tensor(w, bits, symmetric, axis)
    rows = q if per_channel else q.reshape(1, -1)
    assert all(len(r.unique()) <= 2**bits for r in rows)
    torch.testing.assert_close(quantize_tensor(q, bits, symmetric, axis), q, rtol=0, atol=1e-6)
    if bits > 1:
        span = (w.amax(1) - w.amin(1)) if per_channel else (w.max() - w.min())
        assert float(((q - w).abs().amax(1) if per_channel else (q - w).abs().max()).max()) <= float(
            span.max()
        )


def test_one_bit_is_scaled_sign():
    w = torch.tensor([[0.5, -1.5, 2.0], [-0.1, -0.3, 0.2]])
    q = quantize_tensor(w, 1, axis=0)
    expected = torch.tensor([[4 / 3, -4 / 3, 4 / 3], [-0.2, -0.2, 0.2]])
    torch.testing.assert_close(q, expected)


def test_ste_gradient_is_identity():
    x = torch.randn(10, requires_grad=True)
    quantize_tensor_ste(x, 4).sum().backward()
    assert torch.equal(x.grad, torch.ones(10))


def test_bits_out_of_range():
    with pytest.raises(ConfigError, match="bits"):
        int_range(17, True)


@pytest.mark.parametrize("model", ["small_cnn", "resnet18", "mobilenetv2", "vgg_small", "mlp", "lenet5"])
@pytest.mark.parametrize("affine", [True, False])
def test_folding_keeps_outputs(model, affine):
    dataset = "digits" if model in ("small_cnn", "mlp", "lenet5") else "cifar10"
    net = instantiate(compose([f"model={model}", f"dataset={dataset}", f"model.bn_affine={affine}"]).model)
    torch.manual_seed(0)
    for m in net.modules():  # non-trivial statistics and parameters
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.3, 0.3)
    net.eval()
    shape = (1, 8, 8) if dataset == "digits" else (3, 32, 32)
    x = torch.randn(4, *shape)
    folded, pairs = fold_batch_norm(net)
    assert pairs and not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
