"""A trained network at one PTQ pair as ONNX, and the proof that it computes what the sweep reports.

`export_network` rebuilds the PTQ sweep of the run for the pair (batch norm folded as the sweep
folds it, the same sites, the same calibration batches and ranges, the same choice between
re-quantizing and keeping a trained grid), writes the variant as QDQ ONNX (quant.onnx_graph) and
runs it in onnxruntime's CPU execution provider beside quantlab's fake-quantized network on the
test set: top-1 of each, argmax agreement, the largest logit difference, and both throughputs.
`model.onnx` and `export.json` are written atomically; the export is `verified` when, as deployed
(onnxruntime's default optimizations: integer kernels), the top-1 accuracies differ by at most
`tolerance.acc_points` and the argmaxes agree on at least `tolerance.agreement` % of the test
images, else `mismatch`. The same check with float kernels (`float_kernels`) says whether a
mismatch is the runtime's integer arithmetic (float kernels within tolerance) or the exported
graph itself.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantlab.data import DataBundle, EpochLoader, make_loader
from quantlab.engine.files import atomic_write, write_json_atomic
from quantlab.errors import ConfigError
from quantlab.methods.base import Method
from quantlab.quant.layers import WEIGHT_LAYERS
from quantlab.quant.onnx_graph import OPSET, check_exportable, to_onnx
from quantlab.quant.pairs import Pair, parse_pair
from quantlab.quant.sweep import PTQSettings, PTQSweep, Variant, evaluate_variants, pair_name, plan
from quantlab.quant.uniform import Codes, tensor_codes
from quantlab.runs.config import override_key
from quantlab.runs.sweep import folds_batch_norm

log = logging.getLogger("quantlab")

EXTRA = "quantlab export needs the export extra: pip install 'quantlab[export]' (onnx, onnxruntime)"


@dataclass(frozen=True)
class Tolerance:
    acc_points: float = 0.1  # |top-1 ONNX − top-1 fake-quant|, percentage points
    agreement: float = 99.5  # % of test images whose argmax agree


def require_extra() -> None:
    """onnx and onnxruntime importable, or one line saying how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA) from None


def check_network(run_cfg: Any, settings: PTQSettings) -> None:
    """Before anything is written: the network of `run_cfg` (rebuilt from the config, untrained)
    has only operators the ONNX export writes, with the PTQ sites and folding `settings` give."""
    from quantlab.runs.components import build

    method = build(run_cfg.method, "method")
    network = method.export(method.prepare(build(run_cfg.model))).eval()
    size = int(run_cfg.dataset.image_size)
    example = torch.zeros(1, int(run_cfg.dataset.in_channels), size, size)
    check_exportable(sweep_for(network, method, settings).base, example)


def export_settings(run_cfg: Any, cfg: Any, overrides: list[str]) -> dict[str, Any]:
    """The run's ptq settings (those its sweep used), with the ptq.* keys given on the command line."""
    from omegaconf import OmegaConf

    settings = dict(OmegaConf.to_container(run_cfg.get("ptq") or {}, resolve=True))
    given = {override_key(o).split(".", 1)[1] for o in overrides if override_key(o).startswith("ptq.")}
    ours = OmegaConf.to_container(cfg.ptq, resolve=True)
    settings.update({k: ours[k] for k in given if k in ours})
    return settings


def sweep_for(network: nn.Module, method: Method, settings: PTQSettings) -> PTQSweep:
    """The PTQ sweep's network for `network` (folded as the sweep of `quantlab train` folds it)."""
    return PTQSweep(network, settings, folds_batch_norm(method, settings))


def weight_codes(sweep: PTQSweep, built: nn.Module, variant: Variant) -> dict[str, Codes]:
    """The integer codes of every conv / linear weight of the variant, checked bit for bit against
    the weights of the network the sweep evaluates."""
    s = sweep.settings
    base, quantized = dict(sweep.base.named_modules()), dict(built.named_modules())
    codes = {}
    for name, module in base.items():
        if not isinstance(module, WEIGHT_LAYERS):
            continue
        axis = 0 if s.weight_per_channel else None
        c = tensor_codes(module.weight.detach(), variant.weight_bits, s.weight_symmetric, axis)
        if not torch.equal(c.dequantize(), quantized[name].weight.detach()):
            raise RuntimeError(f"export: the integer codes of {name} do not give the sweep's weights")
        codes[name] = c
    return codes


def choose_variant(
    sweep: PTQSweep, pair: Pair, trained_bits: Any, test: EpochLoader, top5: bool
) -> tuple[Variant, str, nn.Module]:
    """The variant the sweep reports for `pair`: with a trained grid and higher_bits=best, the better
    of re-quantizing and keeping it (the sweep's rule); its network."""
    bits = sweep.settings.trained_bits if sweep.settings.trained_bits is not None else trained_bits
    (planned,) = plan([pair], bits, sweep.settings.higher_bits)
    models = {v: sweep.build(v) for v in planned.modes.values()}
    if len(planned.modes) == 1:
        ((mode, variant),) = planned.modes.items()
        return variant, mode, models[variant]
    scores, _ = evaluate_variants(models, test, next(iter(models.values())), top5)
    by_mode = {mode: scores[v] for mode, v in planned.modes.items()}
    mode = max(by_mode, key=lambda m: (by_mode[m]["acc"], m == "ignore"))
    return planned.modes[mode], mode, models[planned.modes[mode]]


@torch.no_grad()
def verify(model: nn.Module, onnx_bytes: bytes, test: EpochLoader) -> dict[str, Any]:
    """Run the ONNX model in onnxruntime's CPU provider beside the fake-quantized network on the test
    set, twice: as deployed (onnxruntime's default graph optimizations: Q/DQ pairs fused into integer
    kernels) and with the optimizations off (`float_kernels`: each DequantizeLinear, Conv, Quantize-
    Linear run as written, in float). The second tells an export that computes another function
    (it disagrees too) from the runtime's integer arithmetic (only the first disagrees)."""
    import onnxruntime as ort

    off = ort.SessionOptions()
    off.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sessions = {
        "deployed": ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]),
        "float_kernels": ort.InferenceSession(onnx_bytes, off, providers=["CPUExecutionProvider"]),
    }
    model = model.eval().cpu()
    for x, _ in test:  # one untimed batch each: first-call allocations out of the throughputs
        model(x.cpu().float())
        sessions["deployed"].run(["logits"], {"input": np.ascontiguousarray(x.cpu().float().numpy())})
        break
    n = correct_torch = 0
    stats = {name: {"correct": 0, "agree": 0, "max_diff": 0.0, "s": 0.0} for name in sessions}
    torch_s = 0.0
    for x, y in test:
        x, y = x.cpu().float(), y.cpu()
        started = time.perf_counter()
        ours = model(x)
        torch_s += time.perf_counter() - started
        n += len(y)
        correct_torch += int((ours.argmax(1) == y).sum())
        for name, session in sessions.items():
            started = time.perf_counter()
            (theirs,) = session.run(["logits"], {"input": np.ascontiguousarray(x.numpy())})
            st = stats[name]
            st["s"] += time.perf_counter() - started
            theirs = torch.from_numpy(theirs)
            st["correct"] += int((theirs.argmax(1) == y).sum())
            st["agree"] += int((theirs.argmax(1) == ours.argmax(1)).sum())
            st["max_diff"] = max(st["max_diff"], float((theirs - ours).abs().max()))
    deployed, exact = stats["deployed"], stats["float_kernels"]
    return {
        "onnx_acc": 100.0 * deployed["correct"] / n,
        "fake_quant_acc": 100.0 * correct_torch / n,
        "agreement": 100.0 * deployed["agree"] / n,
        "max_logit_diff": deployed["max_diff"],
        "images": n,
        "onnxruntime_images_per_s": n / max(deployed["s"], 1e-9),
        "fake_quant_images_per_s": n / max(torch_s, 1e-9),
        "float_kernels": {
            "onnx_acc": 100.0 * exact["correct"] / n,
            "agreement": 100.0 * exact["agree"] / n,
            "max_logit_diff": exact["max_diff"],
        },
    }


def within(checks: dict[str, Any], tolerance: Tolerance) -> bool:
    return (
        abs(checks["onnx_acc"] - checks["fake_quant_acc"]) <= tolerance.acc_points
        and checks["agreement"] >= tolerance.agreement
    )


def export_network(
    network: nn.Module,
    method: Method,
    data: DataBundle,
    pair: Pair,
    settings: PTQSettings,
    out_dir: Path,
    *,
    seed: int = 0,
    batch_size: int = 256,
    tolerance: Tolerance = Tolerance(),
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `network` (a method's export, on the CPU) at `pair` into out_dir/model.onnx with
    out_dir/export.json; returns what export.json holds."""
    require_extra()
    network = copy.deepcopy(network).cpu().eval()
    test = make_loader(data.test, batch_size, train=False)
    sweep = sweep_for(network, method, settings)
    example, _ = next(iter(test))
    check_exportable(sweep.base, example)
    calibration = make_loader(data.calibration, batch_size, train=True, seed=seed)
    sweep.calibrate(calibration)
    variant, mode, model = choose_variant(sweep, pair, method.traits.trained_bits, test, data.top5)
    exported = to_onnx(model, weight_codes(sweep, model, variant), example)
    onnx_bytes = exported.model.SerializeToString()
    atomic_write(out_dir / "model.onnx", lambda f: f.write(onnx_bytes))
    checks = verify(model, onnx_bytes, test)
    accuracy_gap = abs(checks["onnx_acc"] - checks["fake_quant_acc"])
    exact = within({**checks["float_kernels"], "fake_quant_acc": checks["fake_quant_acc"]}, tolerance)
    checks["float_kernels"]["within_tolerance"] = exact
    record = {
        "status": "verified" if within(checks, tolerance) else "mismatch",
        "pair": pair_name(*pair),
        "weight_bits": variant.weight_bits,
        "act_bits": variant.act_bits,
        "mode": mode,
        "onnx": {"file": "model.onnx", "opset": OPSET, "bytes": len(onnx_bytes)},
        "verification": {**checks, "acc_gap": accuracy_gap},
        "tolerance": {"acc_points": tolerance.acc_points, "agreement": tolerance.agreement},
        "ptq": dict(vars(settings)),
        "batch_norm": "folded" if sweep_folded(sweep) else "kept",
        "sites": exported.sites,
        "layers": exported.layers,
        **({"source": source} if source else {}),
    }
    write_json_atomic(out_dir / "export.json", record)
    return record


def sweep_folded(sweep: PTQSweep) -> bool:
    return not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in sweep.base.modules())


def export_pairs(value: Any) -> list[Pair]:
    """`export` of the train config: a list of pairs (w8a8, [4,4], ...), checked."""
    from omegaconf import OmegaConf

    items = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    if items is None:
        return []
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise ConfigError(f"export={items!r}: must be a list of pairs, e.g. export=[w8a8,w4a4]")
    return [parse_pair(item, f"export[{i}]") for i, item in enumerate(items)]


def export_trained(
    network: nn.Module,
    method: Method,
    data: DataBundle,
    pairs: list[Pair],
    settings: PTQSettings,
    run_dir: Path,
    *,
    seed: int,
    batch_size: int,
) -> list[dict[str, Any]]:
    """`quantlab train ... export=[w8a8,...]`: each pair into run_dir/export/<pair>/. The run is done
    by then: an export that fails or mismatches is recorded (and logged), not raised."""
    summaries = []
    for pair in pairs:
        name = pair_name(*pair)
        target = run_dir / "export" / name
        try:
            record = export_network(
                network, method, data, pair, settings, target, seed=seed, batch_size=batch_size
            )
        except (ConfigError, RuntimeError) as e:
            log.warning(f"export {name}: failed: {e}")
            summaries.append({"pair": name, "status": "failed", "error": str(e)})
            continue
        v = record["verification"]
        if record["status"] != "verified":
            log.warning(f"export {name}: {record['status']} (see {target / 'export.json'})")
        keys = ("onnx_acc", "fake_quant_acc", "agreement", "max_logit_diff")
        summaries.append(
            {"pair": name, "status": record["status"], "dir": str(target), **{k: v[k] for k in keys}}
        )
    return summaries
