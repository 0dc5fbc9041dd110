"""`quantlab ptq`: re-sweep post-training quantization on a finished run, into a new directory.

    quantlab ptq run=outputs/train/<run> bitwidth.sweep=[[8,4],[6,4],[4,4]]
    quantlab ptq -m run=<run> ptq.act_range=bn,minmax,percentile,mse

The run is read, never written: its config.yaml rebuilds dataset, model and method, its
checkpoints/best.pt (or last.pt with checkpoint=last) gives the network, and the method's export is
swept (quant.ptq). The new directory holds results.json (`ptq`: one entry per pair, `reference`: the
unquantized network), tb/ (`ptq/acc_w8a4`, ...), metrics.jsonl and ptq.log.
This module also holds what `quantlab train` shares for its own end-of-training sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from quantlab import checkpoint
from quantlab.config import ConfigError, config_dir, parse_sweep, run_command
from quantlab.console import console
from quantlab.data import DataBundle, EpochLoader, make_loader
from quantlab.methods.base import Method
from quantlab.quant.ptq import Pair, PTQSettings, SweepResult, run_sweep
from quantlab.results import existing_run, read_results, recorded, write_json_atomic
from quantlab.runlog import RunLog

log = logging.getLogger("quantlab")

CHECKPOINTS = ("best", "last")


# -- shared with `quantlab train` -------------------------------------------------------------------


def sweep_pairs(sweep: Any) -> list[Pair]:
    """`bitwidth.sweep` as (weight bits, activation bits) pairs; bits must be in 1..16."""
    return parse_sweep(sweep, "bitwidth.sweep", high=16)


def wants_sweep(settings: PTQSettings, method: Method, pairs: Sequence[Pair]) -> bool:
    """ptq.enabled: auto sweeps after float-weight methods only; true always (pairs needed); false never."""
    if settings.enabled is True and not pairs:
        raise ConfigError(
            "ptq.enabled=true: bitwidth.sweep is empty; give pairs, e.g. bitwidth.sweep=[[8,8],[4,4]]"
        )
    if settings.enabled == "auto":
        return bool(pairs) and method.ptq_by_default
    return bool(settings.enabled)


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
    fold = (not method.exported_differs) if settings.fold_bn == "auto" else bool(settings.fold_bn)
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
        trained_bits=method.trained_bits,
        reference=reference,
    )
    t = result.timing
    log.info(
        f"PTQ sweep done in {t['total_s']:.1f}s (calibration {t['calibration_s']:.1f}s on "
        f"{t['calibration_batches']} batches, {t['variants']} quantized networks evaluated in one pass)"
    )
    return result


def scalars(result: SweepResult) -> dict[str, float]:
    """The TensorBoard / results.json metrics of a sweep: ptq/acc_w8a4, ptq/kl_w8a4, ..."""
    out: dict[str, float] = {}
    for entry in result.entries:
        for key in ("acc", "acc5", "kl"):
            if key in entry:
                out[f"ptq/{key}_{entry['pair']}"] = entry[key]
    return out


def print_table(result: SweepResult, title: str) -> None:
    from rich.table import Table

    has_top5 = "acc5" in result.reference
    has_modes = any("modes" in e for e in result.entries)
    table = Table(title=title)
    columns = ["pair", "top-1 %", "Δ vs float", *(["top-5 %"] if has_top5 else []), "KL(float‖quant)"]
    for name in [*columns, *(["mode (other)"] if has_modes else [])]:
        table.add_column(name, justify="left" if name in ("pair", "mode") else "right")
    ref = result.reference
    table.add_row("float", f"{ref['acc']:.2f}", "", *([f"{ref['acc5']:.2f}"] if has_top5 else []), "0")
    for e in result.entries:
        mode = e["mode"]
        if "modes" in e:
            other = {m: v["acc"] for m, v in e["modes"].items() if m != mode}
            mode += "".join(f" ({m}: {acc:.2f})" for m, acc in other.items())
        table.add_row(
            e["pair"],
            f"{e['acc']:.2f}",
            f"{e['acc'] - ref['acc']:+.2f}",
            *([f"{e['acc5']:.2f}"] if has_top5 else []),
            f"{e['kl']:.4g}",
            *([mode] if has_modes else []),
        )
    console.print(table)


def info(result: SweepResult, settings: PTQSettings, pairs: Sequence[Pair]) -> dict[str, Any]:
    """What results.json keeps beside the entries: the reference, the settings, the sites."""
    return {
        "reference": result.reference,
        "pairs": [list(p) for p in pairs],
        "settings": dict(vars(settings)),
        "sites": result.sites,
        "timing": result.timing,
    }


# -- `quantlab ptq` ----------------------------------------------------------------------------------


def check_source(run: Any, which: str = "best") -> Path:
    """The run directory to sweep: it must hold config.yaml and checkpoints/<which>.pt."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint={which!r}: must be one of {', '.join(CHECKPOINTS)}")
    if run is None or str(run).strip() == "":
        raise ConfigError("run: give the run directory to sweep, e.g. run=outputs/train/<date>_<time>")
    source = Path(str(run)).expanduser().resolve()
    if not source.is_dir():
        raise ConfigError(f"run={run}: no such directory")
    missing = [p for p in ("config.yaml", f"checkpoints/{which}.pt") if not (source / p).is_file()]
    if missing:
        raise ConfigError(
            f"run={run}: no {' and no '.join(missing)} there (not a finished quantlab train run)"
        )
    return source


def load_network(source: Path, which: str, run_cfg: DictConfig, device: Any) -> tuple[nn.Module, Method]:
    """Rebuild the run's model and method, load the checkpoint, and return the method's export."""
    from quantlab.train import build

    model = build(run_cfg.model)
    method = build(run_cfg.method)
    state = checkpoint.load(source / "checkpoints" / f"{which}.pt", device)
    model = method.prepare(model.to(device))
    model.load_state_dict(state["model"])
    method.load_state_dict(state.get("method", {}))
    return method.export(model).eval(), method


def run(cfg: DictConfig) -> dict[str, Any]:
    from quantlab.trainer import resolve_device

    started = time.perf_counter()
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    source = check_source(cfg.get("run"), str(cfg.get("checkpoint", "best")))
    if existing_run(out_dir) and hc.mode == RunMode.RUN:
        raise ConfigError(f"hydra.run.dir={out_dir}: already holds a run; pick a new directory")
    results: dict[str, Any] = {
        "status": "running",
        "run_dir": str(out_dir),
        "source_run": str(source),
        "checkpoint": str(cfg.checkpoint),
        "overrides": list(hc.overrides.task),
        "metrics": {},
        "ptq": [],
        "timing": {},
    }
    results_path = out_dir / "results.json"
    runlog = None
    with recorded(results_path, results, started):
        try:
            settings = PTQSettings.from_config(OmegaConf.to_container(cfg.ptq, resolve=True))
            run_cfg = OmegaConf.load(source / "config.yaml")
            sweep = (
                cfg.bitwidth.sweep if cfg.bitwidth.get("sweep") is not None else run_cfg.bitwidth.get("sweep")
            )
            pairs = sweep_pairs(OmegaConf.to_container(sweep) if sweep is not None else None)
            if not pairs:
                raise ConfigError(
                    "bitwidth.sweep: empty (the run has none); give pairs, e.g. bitwidth.sweep=[[8,8],[4,4]]"
                )
            if (source / "results.json").is_file():
                results["source_choices"] = read_results(source).get("choices", {})
            device = resolve_device(str(cfg.device))
            checkpoint.seed_everything(int(cfg.seed))
            from quantlab.train import build

            data = build(run_cfg.dataset)
            network, method = load_network(source, str(cfg.checkpoint), run_cfg, device)
            eval_bs = cfg.get("eval_batch_size") or run_cfg.trainer.get("eval_batch_size")
            eval_bs = int(eval_bs or 2 * int(run_cfg.schedule.batch_size))
            test_loader = make_loader(data.test, eval_bs, train=False, device=device)
            runlog = RunLog(out_dir)
            result = sweep_network(network, pairs, settings, data, test_loader, method, int(cfg.seed))
            swept = scalars(result)
            runlog.scalars(swept, 0, 0)
            metrics = {**{f"reference/{k}": v for k, v in result.reference.items()}, **swept}
            results.update(
                status="completed",
                metrics=metrics,
                ptq=result.entries,
                ptq_info=info(result, settings, pairs),
            )
            results["timing"] = {
                "total_s": time.perf_counter() - started,
                **{f"ptq_{k}": v for k, v in result.timing.items()},
            }
            write_json_atomic(results_path, results)
            print_table(result, f"quantlab ptq — {source.name} ({cfg.checkpoint} checkpoint)")
            console.print(f"results: {results_path}")
            return results
        finally:
            if runlog is not None:
                runlog.close()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="ptq")
def main(cfg: DictConfig) -> float | None:
    entries = run_command(run, cfg, "quantlab ptq")["ptq"]
    return entries[-1]["acc"] if entries else None


if __name__ == "__main__":
    main()
