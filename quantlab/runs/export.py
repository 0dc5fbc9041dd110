"""A trained network at one PTQ pair as ONNX, and the proof that it computes what the sweep reports.

`export_network` rebuilds the PTQ sweep of the run for the pair (batch norm folded as the sweep
folds it, the same sites, the same calibration batches and ranges, the same choice between
re-quantizing and keeping a trained grid) and writes its int32-bias variant (each bias on its
accumulator grid s_x·s_w, `ptq.bias=int32`: what an integer runtime adds) as QDQ ONNX
(quant.onnx_graph), with the weight codes the sweep itself puts in place. The ONNX model runs in
onnxruntime's CPU provider beside quantlab's fake-quantized int32-bias variant on the test set: top-1
of each, argmax agreement, the largest logit difference, and both throughputs; the pair's accuracy
as the sweep reports it (`pair_acc`, biases as `ptq.bias` says) is recorded beside them.

`model.onnx` and `export.json` are written atomically. The export is `verified` when both checks pass:
- float kernels (onnxruntime's graph optimizations off: each node as written): top-1 within
  `tolerance.acc_points` and argmax agreement ≥ `tolerance.float_agreement` % — the ONNX graph is the
  fake-quantized network (this is the check that catches an export bug);
- integer kernels (as deployed: Q/DQ pairs fused into integer kernels that requantize once): top-1
  within max(`tolerance.acc_points`, `tolerance.images` test images) and argmax agreement ≥
  `tolerance.agreement` %.
Else `mismatch`, naming the check that failed.
"""

from __future__ import annotations

import copy
import dataclasses
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
from quantlab.quant.onnx_graph import OPSET, check_exportable, to_onnx
from quantlab.quant.pairs import Pair, parse_pair
from quantlab.quant.sweep import PTQSettings, PTQSweep, Variant, evaluate_variants, pair_name, plan
from quantlab.quant.uniform import Codes
from quantlab.runs.config import override_key
from quantlab.runs.sweep import folds_batch_norm

log = logging.getLogger("quantlab")

EXTRA = "quantlab export needs the export extra: pip install 'quantlab[export]' (onnx, onnxruntime)"


@dataclass(frozen=True)
class Tolerance:
    """How close onnxruntime must come to the fake-quantized network (conf/export.yaml `tolerance`)."""

    acc_points: float  # |top-1 ONNX − top-1 fake-quant|, percentage points ...
    images: int  # ... or this many test images, whichever is larger (integer kernels)
    agreement: float  # % of test images whose argmax agree, integer kernels
    float_agreement: float  # % of test images whose argmax agree, float kernels

    @classmethod
    def from_config(cls, node: Any) -> Tolerance:
        """conf/export.yaml's `tolerance`, each value checked (one line naming the key)."""
        values = dict(node)
        for key in ("acc_points", "images", "agreement", "float_agreement"):
            value = values.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"tolerance.{key}={value!r}: must be a number >= 0")
        unknown = sorted(set(values) - {"acc_points", "images", "agreement", "float_agreement"})
        if unknown:
            raise ConfigError(
                f"tolerance.{unknown[0]}: unknown setting; known: acc_points, images, agreement, "
                "float_agreement"
            )
        return cls(
            float(values["acc_points"]),
            int(values["images"]),
            float(values["agreement"]),
            float(values["float_agreement"]),
        )

    def failures(self, checks: dict[str, Any]) -> list[str]:
        """The checks `verify`'s result fails, each in words (none: verified)."""
        failed = []
        exact = checks["float_kernels"]
        gap = abs(exact["onnx_acc"] - checks["fake_quant_acc"])
        if gap > self.acc_points or exact["agreement"] < self.float_agreement:
            failed.append(
                f"float kernels: top-1 {exact['onnx_acc']:.2f} vs {checks['fake_quant_acc']:.2f}, argmax "
                f"agreement {exact['agreement']:.2f} % (allowed: {self.acc_points} points, "
                f">= {self.float_agreement} %): the exported graph computes another function"
            )
        points = max(self.acc_points, 100.0 * self.images / max(checks["images"], 1))
        gap = abs(checks["onnx_acc"] - checks["fake_quant_acc"])
        if gap > points + 1e-9 or checks["agreement"] < self.agreement:
            failed.append(
                f"integer kernels: top-1 {checks['onnx_acc']:.2f} vs {checks['fake_quant_acc']:.2f}, argmax "
                f"agreement {checks['agreement']:.2f} % (allowed: {points:.2f} points, >= {self.agreement} %)"
            )
        return failed


DEFAULT_TOLERANCE = Tolerance(acc_points=0.1, images=2, agreement=99.0, float_agreement=99.5)


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
    """The sweep's integer codes of every conv / linear weight of the variant, checked bit for bit
    against the weights of the network it evaluates."""
    codes = sweep.weight_codes(variant)
    quantized = dict(built.named_modules())
    for name, c in codes.items():
        if not torch.equal(c.dequantize(), quantized[name].weight.detach()):
            raise RuntimeError(f"export: the integer codes of {name} do not give the sweep's weights")
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


@torch.no_grad()
def top1(model: nn.Module, test: EpochLoader) -> float:
    correct = n = 0
    for x, y in test:
        correct += int((model(x.cpu().float()).argmax(1) == y.cpu()).sum())
        n += len(y)
    return 100.0 * correct / max(n, 1)


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
    tolerance: Tolerance = DEFAULT_TOLERANCE,
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
    deployed = dataclasses.replace(variant, int32_bias=True)
    integer_model = model if variant.int32_bias else sweep.build(deployed)
    exported = to_onnx(integer_model, weight_codes(sweep, integer_model, deployed), example)
    onnx_bytes = exported.model.SerializeToString()
    atomic_write(out_dir / "model.onnx", lambda f: f.write(onnx_bytes))
    checks = verify(integer_model, onnx_bytes, test)
    checks["pair_acc"] = checks["fake_quant_acc"] if model is integer_model else top1(model, test)
    failures = tolerance.failures(checks)
    record = {
        "status": "mismatch" if failures else "verified",
        "failed": failures,
        "pair": pair_name(*pair),
        "weight_bits": variant.weight_bits,
        "act_bits": variant.act_bits,
        "mode": mode,
        "onnx": {"file": "model.onnx", "opset": OPSET, "bytes": len(onnx_bytes)},
        "bias": "int32",
        "verification": {**checks, "acc_gap": abs(checks["onnx_acc"] - checks["fake_quant_acc"])},
        "tolerance": dataclasses.asdict(tolerance),
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
