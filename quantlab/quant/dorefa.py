"""The DoReFa weight quantizer (Zhou et al. 2016) as the WaveQ appendix writes it (Eqs. B.1, B.2).

    quantize_b(x) = round((2^b − 1)·x) / (2^b − 1)                       (x ∈ [0, 1])
    w_qo = 2·quantize_b( tanh(w) / (2·max|tanh(W)|) + ½ ) − 1              (Eq. B.1)
    w_q  = c·w_qo                                                           (Eq. B.2: c = α, a scale)

so a b-bit layer takes the 2^b levels 2j/(2^b − 1) − 1, j = 0 … 2^b − 1, of [−1, 1] (no zero when b ≥ 1:
a "mid-rise" grid with both ends ±1), times c.
"""

from __future__ import annotations

import torch
from torch import Tensor


def quantize_unit(x: Tensor, bits: int) -> Tensor:
    """quantize_b of Eq. B.1: x ∈ [0, 1] rounded to the nearest of the 2^b points j/(2^b − 1)."""
    k = float(2**bits - 1)
    return torch.round(x * k) / k


def tanh_normalize(w: Tensor) -> Tensor:
    """tanh(w) / max|tanh(W)| ∈ [−1, 1] (DoReFa's weight normalization, continuous in w)."""
    t = torch.tanh(w)
    return t / t.abs().amax().clamp_min(torch.finfo(t.dtype).tiny)


def dorefa_levels(bits: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The 2^b values w_qo can take under Eq. B.1: 2j/(2^b − 1) − 1."""
    k = 2**bits - 1
    return torch.arange(k + 1, dtype=dtype) * (2.0 / k) - 1.0


def dorefa_quantize(w: Tensor, bits: int, scale: Tensor | float = 1.0) -> Tensor:
    """Eq. B.1 times the layer scale c of Eq. B.2: c·(2·quantize_b(tanh(w) / (2 max|tanh W|) + ½) − 1)."""
    if not 1 <= int(bits) <= 16:
        raise ValueError(f"bits={bits}: DoReFa bit-widths are integers in 1..16")
    return scale * (2.0 * quantize_unit(tanh_normalize(w) / 2.0 + 0.5, int(bits)) - 1.0)
