"""The PTQ sweep of a run's exported network, as `quantlab train` (after training) and `quantlab ptq`
(on a finished run) both run it: calibration batches from the training images, the sweep itself
(quant.sweep), and what results.json and TensorBoard keep of it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from quantlab.data import DataBundle, EpochLoader, make_loader
from quantlab.errors import ConfigError
from quantlab.methods.base import Method, Traits
from quantlab.quant.pairs import Pair
from quantlab.quant.sweep import PTQSettings, SweepResult, run_sweep
from quantlab.runs.runlog import RunLog

log = logging.getLogger("quantlab")


def wants_sweep(settings: PTQSettings, traits: Traits, pairs: Sequence[Pair]) -> bool:
    """ptq.enabled: auto sweeps after float-weight methods only; true always (pairs needed); false never."""
    if settings.enabled is True and not pairs:
        raise ConfigError(
            "ptq.enabled=true: bitwidth.sweep is empty; give pairs, e.g. bitwidth.sweep=[[8,8],[4,4]]"
        )
    if settings.enabled == "auto":
        return bool(pairs) and traits.ptq_by_default
    return bool(settings.enabled)


def folds_batch_norm(method: Method, settings: PTQSettings) -> bool:
    """ptq.fold_bn: auto folds batch norm for networks whose export is the trained network (float
    weights), not for binary / ternary exports."""
    return (not method.traits.exported_differs) if settings.fold_bn == "auto" else bool(settings.fold_bn)


def sweep_network(
    network: nn.Module,
    pairs: Sequence[Pair],
    settings: PTQSettings,
    data: DataBundle,
    test_loader: EpochLoader,
    method: Method,
    seed: int,
    reference: Sequence[tuple[Tensor, Tensor]] | None = None,
) -> SweepResult:
    """The sweep of `network` (the method's export) with calibration batches from the training images."""
    fold = folds_batch_norm(method, settings)
    device = next(iter(network.parameters())).device
    calibration = make_loader(data.calibration, test_loader.batch_size, train=True, seed=seed, device=device)
    names = ", ".join(f"w{w}a{'fp' if a is None else a}" for w, a in pairs)
    log.info(
        f"PTQ sweep {names}: activations at layer {settings.act_placement}s, ranges {settings.act_range}, "
        f"batch norm {'folded' if fold else 'kept'}"
    )
    result = run_sweep(
        network,
        pairs,
        settings,
        calibration,
        test_loader,
        top5=data.top5,
        fold=fold,
        trained_bits=method.traits.trained_bits,
        reference=reference,
    )
    t = result.timing
    log.info(
        f"PTQ sweep done in {t['total_s']:.1f}s (calibration {t['calibration_s']:.1f}s on "
        f"{t['calibration_batches']} batches, {t['variants']} quantized networks evaluated in one pass)"
    )
    return result


def sweep_metrics(result: SweepResult) -> dict[str, float]:
    """The TensorBoard / results.json metrics of a sweep: ptq/acc_w8a4, ptq/kl_w8a4, ..."""
    out: dict[str, float] = {}
    for entry in result.entries:
        for key in ("acc", "acc5", "kl"):
            if key in entry:
                out[f"ptq/{key}_{entry['pair']}"] = entry[key]
    return out


def sweep_info(result: SweepResult, settings: PTQSettings, pairs: Sequence[Pair]) -> dict[str, Any]:
    """What results.json keeps beside the entries: the reference, the settings, the sites."""
    return {
        "reference": result.reference,
        "pairs": [list(p) for p in pairs],
        "settings": dict(vars(settings)),
        "sites": result.sites,
        "timing": result.timing,
    }


def record_sweep(
    results: dict[str, Any],
    result: SweepResult,
    settings: PTQSettings,
    pairs: Sequence[Pair],
    runlog: RunLog,
    step: int = 0,
    epoch: int = 0,
) -> dict[str, float]:
    """Put a sweep into results.json's `ptq` / `ptq_info` and TensorBoard; return its metrics."""
    metrics = sweep_metrics(result)
    runlog.scalars(metrics, step, epoch)
    results.update(ptq=result.entries, ptq_info=sweep_info(result, settings, pairs))
    return metrics
