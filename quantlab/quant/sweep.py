"""The post-training quantization (PTQ) sweep: one network, K (weight bits, activation bits) pairs.

Per pair (gradient-L1 paper, Sec. 4.1 "Quantization details"; Sec. 4.2 for the KL):
1. batch norm folded into the preceding conv / linear (quant.fold; on by default for float networks);
2. weights: uniform symmetric round-to-nearest, per output channel by default (quant.uniform);
   biases stay in float (`ptq.bias=float`, as the paper's tables report), or, with `ptq.bias=int32`,
   each is rounded to its layer's accumulator grid s_x·s_w (input activation scale × weight scale of
   the output channel), as integer runtimes add it (onnxruntime's fused QDQ kernels, gemmlowp); a
   layer whose input is not on a grid (act_placement=output, the unquantized network input or
   activations in float) keeps its float bias;
3. activations: per-tensor fake quantization at every site (quant.sites), ranges from batch-norm
   statistics (β ± n·γ, Nagel et al. 2019), min–max, percentile or MSE-optimal clipping on N
   calibration batches (quant.ranges); an activation entry of None leaves activations in float;
4. evaluation on the test set: top-1 (top-5 where asked) and the mean KL(p_float ‖ p_quant) of the
   predictive distributions.
Cost: calibration is one pass over N training batches (skipped when every range is data-free); all
pairs are evaluated in a single pass over the test set, against the float logits the caller already
has (the trainer's test evaluation) or, when it has none, the float network in the same pass.

A network trained at b bits and evaluated at B > b bits (`trained_bits`) is evaluated both by
re-quantizing at B bits and by "ignoring the higher-order bits" (its b-bit grid is exactly
representable at B bits, i.e. it is evaluated on its own b-bit grid); `higher_bits="best"` reports
the better of the two, as the paper does (re-quantizing only where it is strictly better).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import symbolic_trace

from quantlab.errors import ConfigError
from quantlab.quant.adaround import AdaRoundSettings
from quantlab.quant.algorithms import ROUNDINGS, TRANSFORMS, Build, corrections, layer_inputs
from quantlab.quant.fold import fold_batch_norm
from quantlab.quant.pairs import Pair, check_bits
from quantlab.quant.ranges import (
    Range,
    RangeObserver,
    bn_channel_range,
    clamp_range,
    mse_range,
    percentile_range,
)
from quantlab.quant.sites import PLACEMENTS, ActQuant, Site, instrument
from quantlab.quant.uniform import Codes, activation_grid

log = logging.getLogger("quantlab")

RANGES = ("bn", "minmax", "percentile", "mse")
HIGHER_BITS = ("best", "requantize", "ignore")
BIASES = ("float", "int32")


def pair_name(weight_bits: int, act_bits: int | None) -> str:
    """w8a4; w8afp where activations stay in float."""
    return f"w{weight_bits}a{'fp' if act_bits is None else act_bits}"


@dataclass
class PTQSettings:
    """The `ptq` config node. conf/ptq_setup/default.yaml is the one source of the defaults (no field
    has one here); every field is checked on creation."""

    enabled: bool | str
    fold_bn: bool | str
    weight_per_channel: bool
    weight_symmetric: bool
    act_placement: str
    act_range: str
    act_fallback: str
    act_symmetric: bool
    bn_n: float
    percentile: float
    quantize_network_input: bool
    calibration_batches: int
    calibration_samples: int
    higher_bits: str
    trained_bits: list | None
    bias: str
    weight_rounding: str  # quant.algorithms.ROUNDINGS: nearest | adaround
    bias_correction: bool
    equalize: bool
    adaround: dict  # quant.adaround.AdaRoundSettings

    def __post_init__(self) -> None:
        def choice(key: str, allowed: Sequence[Any]) -> None:
            value = getattr(self, key)
            if value not in allowed:
                raise ConfigError(f"ptq.{key}={value!r}: must be one of {', '.join(map(str, allowed))}")

        choice("enabled", ("auto", True, False))
        choice("fold_bn", ("auto", True, False))
        choice("act_placement", PLACEMENTS)
        choice("act_range", RANGES)
        choice("act_fallback", RANGES[1:])
        choice("higher_bits", HIGHER_BITS)
        choice("bias", BIASES)
        choice("weight_rounding", tuple(ROUNDINGS))
        choice("bias_correction", (True, False))
        choice("equalize", (True, False))
        self.adaround = dict(self.adaround)
        AdaRoundSettings.from_config(self.adaround)
        for key in ("weight_per_channel", "weight_symmetric", "act_symmetric", "quantize_network_input"):
            choice(key, (True, False))
        if not isinstance(self.bn_n, (int, float)) or isinstance(self.bn_n, bool) or self.bn_n <= 0:
            raise ConfigError(f"ptq.bn_n={self.bn_n!r}: must be a number > 0")
        if not isinstance(self.percentile, (int, float)) or not 50 < self.percentile <= 100:
            raise ConfigError(f"ptq.percentile={self.percentile!r}: must be a number in (50, 100]")
        for key in ("calibration_batches", "calibration_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ptq.{key}={value!r}: must be an integer > 0")
        if self.trained_bits is not None:
            bits = list(self.trained_bits)
            if len(bits) != 2:
                raise ConfigError(f"ptq.trained_bits={bits!r}: must be [weight_bits, act_bits] or null")
            check_bits(bits[0], "ptq.trained_bits[0]", high=16, allow_none=True)
            check_bits(bits[1], "ptq.trained_bits[1]", high=16, allow_none=True)

    @classmethod
    def from_config(cls, node: Any) -> PTQSettings:
        data = dict(node or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"ptq.{unknown[0]}: unknown setting; known: {', '.join(sorted(known))}")
        missing = sorted(known - set(data))
        if missing:
            raise ConfigError(f"ptq.{missing[0]}: missing (conf/ptq_setup/default.yaml sets every ptq key)")
        if data.get("trained_bits") is not None:
            data["trained_bits"] = list(data["trained_bits"])
        if data.get("adaround") is not None:
            data["adaround"] = dict(data["adaround"])
        return cls(**data)


@dataclass(frozen=True)
class Variant:
    """What is actually evaluated: weights at `weight_bits`, activations at `act_bits` (None: float),
    biases in float or on the int32 accumulator grid (`int32_bias`)."""

    weight_bits: int
    act_bits: int | None
    int32_bias: bool = False


@dataclass
class PlannedPair:
    weight_bits: int
    act_bits: int | None
    modes: dict[str, Variant]  # "requantize" and/or "ignore"


def plan(
    pairs: Iterable[Pair],
    trained_bits: Sequence[int | None] | None,
    higher_bits: str,
    int32_bias: bool = False,
) -> list[PlannedPair]:
    """The variants each pair needs: re-quantize at the pair's bits and/or keep the trained grid."""
    tw, ta = (list(trained_bits) + [None, None])[:2] if trained_bits is not None else (None, None)
    planned = []
    for w, a in pairs:
        requantize = Variant(w, a, int32_bias)
        ignore = Variant(
            min(w, tw) if tw is not None else w, a if a is None or ta is None else min(a, ta), int32_bias
        )
        if ignore == requantize or higher_bits == "requantize":
            modes = {"requantize": requantize}
        elif higher_bits == "ignore":
            modes = {"ignore": ignore}
        else:
            modes = {"requantize": requantize, "ignore": ignore}
        planned.append(PlannedPair(w, a, modes))
    return planned


@dataclass
class SweepResult:
    entries: list[dict[str, Any]]
    reference: dict[str, float]
    timing: dict[str, float] = field(default_factory=dict)
    sites: dict[str, int] = field(default_factory=dict)


class PTQSweep:
    """Fold, instrument and calibrate a network once; then build and evaluate quantized copies."""

    def __init__(self, network: nn.Module, settings: PTQSettings, fold: bool) -> None:
        self.settings = settings
        self.device = next(iter(network.parameters())).device
        if fold:
            self.base, _folded = fold_batch_norm(network)
        else:
            _folded = {}
            self.base = symbolic_trace(copy.deepcopy(network).eval())
        for transform in TRANSFORMS:  # e.g. cross-layer equalization, on the folded network
            if getattr(settings, transform.setting):
                transform.apply(self.base, _folded)
        self.sites: list[Site] = instrument(
            self.base, _folded, settings.act_placement, settings.quantize_network_input
        )
        self.observers: dict[str, RangeObserver] = {}
        self._ranges: dict[tuple[str, int | None], Range] = {}
        self.images = torch.empty(0)  # calibration images kept for AdaRound / bias correction
        self._float_inputs: dict[str, Tensor] = {}
        self._codes: dict[Variant, dict[str, Codes]] = {}

    def images_wanted(self) -> int:
        """Calibration images the algorithms need (0: none; -1: those of the calibration batches)."""
        s = self.settings
        if s.weight_rounding == "adaround":
            return int(s.adaround["samples"])
        return -1 if s.bias_correction else 0

    def float_inputs(self, name: str, images: Tensor) -> Tensor:
        """Layer `name`'s input in the float network for the kept calibration images (cached)."""
        if name not in self._float_inputs or len(self._float_inputs[name]) != len(images):
            self._float_inputs[name] = layer_inputs(self.base, name, images)
        return self._float_inputs[name]

    def needs_data(self) -> list[Site]:
        """Sites whose range comes from calibration data."""
        if self.settings.act_range != "bn":
            return list(self.sites)
        return [s for s in self.sites if not s.data_free]

    @torch.no_grad()
    def calibrate(self, batches: Iterable[tuple[Tensor, Tensor]]) -> int:
        """Observe the float network's activations at the sites that need data, and keep the images
        the algorithms need (AdaRound's samples, or the calibration batches for bias correction);
        returns the batches used."""
        todo, wanted = self.needs_data(), self.images_wanted()
        if not todo and not wanted:
            return 0
        n = self.settings.calibration_batches
        per_batch = -(-self.settings.calibration_samples // n)
        modules = dict(self.base.named_modules())
        for i, site in enumerate(todo):
            self.observers[site.name] = RangeObserver(self.settings.calibration_samples, per_batch, seed=i)
            modules[site.name].observer = self.observers[site.name]
        used, kept = 0, []
        try:
            for x, _ in batches:
                if used < n and todo:
                    self.base(x)
                    if used + 1 == n:
                        for site in todo:
                            modules[site.name].observer = None
                if used < n or sum(len(k) for k in kept) < wanted:
                    kept.append(x)
                used += 1
                if used >= n and sum(len(k) for k in kept) >= wanted:
                    break
        finally:
            for site in todo:
                modules[site.name].observer = None
        if used == 0:
            raise ConfigError("ptq: no calibration batch (the training split is empty)")
        if wanted:
            self.images = torch.cat(kept)[: wanted if wanted > 0 else None]
        return used

    def site_range(self, site: Site, bits: int) -> Range:
        """The activation range of one site for `bits`-bit quantization (cached)."""
        s = self.settings
        method = s.act_range if (s.act_range != "bn" or site.data_free) else s.act_fallback
        key = (site.name, bits if method == "mse" else None)
        if key in self._ranges:
            return self._ranges[key]
        if method == "bn":
            lo_c, hi_c = bn_channel_range(site.bn, s.bn_n)  # type: ignore[arg-type]
            value = clamp_range((float(lo_c.min()), float(hi_c.max())), site.clamps)
        else:
            observer = self.observers.get(site.name)
            if observer is None or not observer.seen:
                raise RuntimeError(f"ptq: site {site.name} needs calibration data; call calibrate() first")
            if method == "minmax":
                value = observer.minmax()
            elif method == "percentile":
                value = percentile_range(observer.values(), s.percentile)
            else:
                value = mse_range(observer.values(), bits, s.act_symmetric)
        self._ranges[key] = value
        return value

    def build(self, variant: Variant) -> nn.Module:
        """A quantized copy: activation grids at variant.act_bits, weights rounded at
        variant.weight_bits by `ptq.weight_rounding`, then the corrections (quant.algorithms)."""
        model = copy.deepcopy(self.base)
        s = self.settings
        modules = dict(model.named_modules())
        for site in self.sites:
            quant: ActQuant = modules[site.name]  # type: ignore[assignment]
            if variant.act_bits is None:
                quant.grid = None
            else:
                lo, hi = self.site_range(site, variant.act_bits)
                quant.grid = activation_grid(lo, hi, variant.act_bits, s.act_symmetric)
        build = Build(self, model, variant)
        rounding = ROUNDINGS[s.weight_rounding]
        if rounding.needs_data and not len(self.images):
            raise RuntimeError(f"ptq.weight_rounding={s.weight_rounding} needs calibrate() first")
        rounding.round(build)
        for correction in corrections(build):
            correction.apply(build)
        self._codes[variant] = build.codes
        return model.eval()

    def weight_codes(self, variant: Variant) -> dict[str, Codes]:
        """The integer codes of every conv / linear weight of `variant`, as `build` put them in place."""
        if variant not in self._codes:
            self.build(variant)
        return self._codes[variant]


@torch.no_grad()
def evaluate_variants(
    models: dict[Variant, nn.Module],
    loader: Iterable[tuple[Tensor, Tensor]],
    reference: nn.Module | Sequence[tuple[Tensor, Tensor]],
    top5: bool,
) -> tuple[dict[Variant, dict[str, float]], dict[str, float]]:
    """One pass over the test set: top-1 (top-5), cross-entropy and mean KL(p_ref ‖ p_variant)."""
    zeros = torch.zeros(4, dtype=torch.float64)
    stats = {v: zeros for v in models}  # correct, correct5, loss, kl: summed on the device, no syncs
    ref_stats = zeros
    count = 0
    cached = not isinstance(reference, nn.Module)
    if not cached:
        reference.eval()
    for batch_index, (x, y) in enumerate(loader):
        if cached:
            ref_logits, ref_y = reference[batch_index]  # type: ignore[index]
            if ref_y.shape != y.shape or not torch.equal(ref_y.to(y.device), y):
                raise RuntimeError("ptq: the cached float logits do not match the test loader's order")
            ref_logits = ref_logits.to(y.device).double()
        else:
            ref_logits = reference(x).double()  # type: ignore[operator]
        ref_log_p = F.log_softmax(ref_logits, dim=1)
        ref_stats = ref_stats.to(y.device) + _scores(ref_logits, y, top5, ref_log_p)
        for variant, model in models.items():
            logits = model(x).double()
            stats[variant] = stats[variant].to(y.device) + _scores(logits, y, top5, ref_log_p)
        count += len(y)
    n = max(count, 1)

    def as_metrics(t: Tensor) -> dict[str, float]:
        out = {"acc": 100.0 * float(t[0]) / n, "loss": float(t[2]) / n}
        if top5:
            out["acc5"] = 100.0 * float(t[1]) / n
        return out

    reference_metrics = as_metrics(ref_stats)  # its KL to itself is 0 by definition: not reported
    return {v: {**as_metrics(t), "kl": float(t[3]) / n} for v, t in stats.items()}, reference_metrics


def _scores(logits: Tensor, y: Tensor, top5: bool, ref_log_p: Tensor) -> Tensor:
    """[correct, correct in top 5, summed cross-entropy, summed KL(p_ref ‖ p)] of a batch (float64)."""
    correct = (logits.argmax(1) == y).sum()
    correct5 = (
        (logits.topk(min(5, logits.shape[1]), 1).indices == y[:, None]).any(1).sum() if top5 else correct * 0
    )
    loss = F.cross_entropy(logits, y, reduction="sum")
    kl = F.kl_div(F.log_softmax(logits, dim=1), ref_log_p, reduction="sum", log_target=True)
    return torch.stack([correct.double(), correct5.double(), loss, kl])


def run_sweep(
    network: nn.Module,
    pairs: Sequence[Pair],
    settings: PTQSettings,
    calibration: Iterable[tuple[Tensor, Tensor]],
    test: Iterable[tuple[Tensor, Tensor]],
    *,
    top5: bool = False,
    fold: bool = True,
    trained_bits: Sequence[int | None] | None = None,
    reference: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> SweepResult:
    """Sweep `pairs` on `network` (eval mode, not modified). `reference`: the float network's test
    logits and labels per batch, when the caller has them; else the network runs beside the pairs."""
    started = time.perf_counter()
    sweep = PTQSweep(network, settings, fold)
    used = sweep.calibrate(calibration)
    calibrated = time.perf_counter()
    bits = settings.trained_bits if settings.trained_bits is not None else trained_bits
    planned = plan(pairs, bits, settings.higher_bits, settings.bias == "int32")
    variants = {v for p in planned for v in p.modes.values()}
    models = {
        v: sweep.build(v) for v in sorted(variants, key=lambda v: (-v.weight_bits, -(v.act_bits or 99)))
    }
    built = time.perf_counter()
    scores, ref_scores = evaluate_variants(
        models, test, reference if reference is not None else network, top5
    )
    entries = []
    for p in planned:
        by_mode = {mode: scores[v] for mode, v in p.modes.items()}
        mode = max(by_mode, key=lambda m: (by_mode[m]["acc"], m == "ignore"))
        entry: dict[str, Any] = {
            "pair": pair_name(p.weight_bits, p.act_bits),
            "weight_bits": p.weight_bits,
            "act_bits": p.act_bits,
            **by_mode[mode],
            "mode": mode,
        }
        if len(by_mode) > 1:
            entry["modes"] = by_mode
        entries.append(entry)
    done = time.perf_counter()
    timing = {
        "calibration_s": calibrated - started,
        "build_s": built - calibrated,
        "eval_s": done - built,
        "total_s": done - started,
        "calibration_batches": used,
        "variants": len(models),
    }
    data_free = sum(s.data_free for s in sweep.sites)
    sites = {"total": len(sweep.sites), "bn_ranges": data_free if settings.act_range == "bn" else 0}
    return SweepResult(entries, ref_scores, timing, sites)
