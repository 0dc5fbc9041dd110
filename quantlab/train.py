"""`quantlab train`: compose the config, build dataset / model / method, train, test, write results.

After the test, the post-training quantization sweep of `bitwidth.sweep` (quantlab.ptq) runs on
the exported network, for float-weight methods or when `ptq.enabled=true`.
The run directory holds .hydra/ (the composed config), tb/, checkpoints/{last,best}.pt,
exported.pt, metrics.jsonl, train.log and results.json (see quantlab.results).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from quantlab import checkpoint
from quantlab.config import (
    ConfigError,
    QuantlabError,
    check_missing,
    check_preset_row,
    config_dir,
    run_command,
    validate_train_config,
)
from quantlab.console import console
from quantlab.ptq import info as ptq_info
from quantlab.ptq import print_table as print_ptq_table
from quantlab.ptq import scalars as ptq_scalars
from quantlab.ptq import sweep_network, sweep_pairs, wants_sweep
from quantlab.quant.ptq import PTQSettings
from quantlab.results import existing_run, recorded, write_json_atomic
from quantlab.runlog import RunLog

log = logging.getLogger("quantlab")

RESOLVED = "config.yaml"  # the run's fully resolved config, written when it starts


def load_init(model: Any, source: str) -> None:
    """Start from another run's network (fine-tuning): its best float weights, or its export when
    that run was quantized; a .pt file with a "model" entry or a plain state dict works too."""
    path = Path(source).expanduser()
    if path.is_dir():
        best = path / "checkpoints" / "best.pt"
        if not best.exists():
            raise ConfigError(f"init_from={source}: no checkpoints/best.pt in that run directory")
        state = checkpoint.load(best)["model"]
        if any("parametrizations" in k for k in state) and (path / "exported.pt").exists():
            state = checkpoint.load(path / "exported.pt")["model"]
    elif path.is_file():
        state = checkpoint.load(path)
        state = state.get("model", state)
    else:
        raise ConfigError(f"init_from={source}: no such run directory or checkpoint file")
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise ConfigError(f"init_from={source}: none of its tensors fit this model")
    log.info(
        f"init_from {source}: {loaded} tensors loaded; missing {len(result.missing_keys)}, "
        f"ignored {len(result.unexpected_keys)}"
    )


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _config_diff(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [f"{prefix[:-1]} (run: {a!r}, now: {b!r})"]


def resume_config(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> DictConfig:
    """The config of the run being resumed (resolved when it started); changing overrides are refused."""
    saved_path = run_dir / RESOLVED
    if not saved_path.exists() or not (run_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"resume={run_dir}: no {RESOLVED} and checkpoints/last.pt there to resume from")
    saved = OmegaConf.load(saved_path)
    user = [o for o in overrides if not o.startswith(("resume=", "hydra."))]
    if user:
        now = OmegaConf.to_container(cfg, resolve=True)
        before = OmegaConf.to_container(saved, resolve=False)
        now.pop("resume", None)
        before.pop("resume", None)
        diff = _config_diff(before, now)
        if diff:
            raise ConfigError(f"resume={run_dir}: settings differ from the run's: {'; '.join(diff[:5])}")
    with open_dict(saved):
        saved.resume = str(run_dir)
    return saved


def build(node: DictConfig) -> Any:
    """instantiate(), with a builder's own check (a ValueError or QuantlabError) as a one-line error."""
    try:
        return instantiate(node)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, QuantlabError):
            raise cause from None
        if isinstance(cause, ValueError):
            raise ConfigError(str(cause)) from None
        raise


def run(cfg: DictConfig) -> dict[str, Any]:
    """The body of `quantlab train`; returns the results written to results.json."""
    started = time.perf_counter()
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    resume = cfg.get("resume")
    if resume:
        cfg = resume_config(cfg, Path(resume), overrides)
        saved_overrides = Path(resume) / ".hydra" / "overrides.yaml"
        if saved_overrides.exists():
            overrides = list(OmegaConf.load(saved_overrides))
    elif existing_run(run_dir) and hc.mode == RunMode.RUN:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: already holds a run; pick a new directory or resume={run_dir}"
        )

    results: dict[str, Any] = {
        "status": "running",
        "run_dir": str(run_dir),
        "overrides": overrides,
        "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra")},
        "metrics": {},
        "ptq": [],
        "timing": {},
    }
    results_path = run_dir / "results.json"
    runlog = None
    with recorded(results_path, results, started):  # KeyboardInterrupt too: marked failed, resumable
        try:
            choices = hc.runtime.choices
            check_preset_row(cfg, choices.get("method"), choices.get("experiment"))
            check_missing(cfg)
            try:
                resolved = OmegaConf.to_yaml(cfg, resolve=True)
            except OmegaConfBaseException as e:
                raise ConfigError(" ".join(str(e).split())) from None
            if not resume:
                (run_dir / RESOLVED).write_text(resolved)
            cfg = OmegaConf.create(resolved)
            validate_train_config(cfg)
            ptq_settings = PTQSettings.from_config(cfg.get("ptq"))
            pairs = sweep_pairs(cfg.bitwidth.get("sweep"))
            checkpoint.seed_everything(int(cfg.seed))
            data = build(cfg.dataset)
            model = build(cfg.model)
            if cfg.get("init_from") and not resume:
                load_init(model, str(cfg.init_from))
            method = build(cfg.method)
            run_ptq = wants_sweep(ptq_settings, method, pairs)
            from quantlab.trainer import Trainer

            state = checkpoint.load(run_dir / "checkpoints" / "last.pt") if resume else None
            resume_step = state["clock"]["step"] if state else None
            runlog = RunLog(run_dir, resume_step)
            trainer = Trainer(model, method, data, cfg, run_dir, runlog)
            if state:
                trainer.load_state(state)
                del state
                log.info(f"resumed {run_dir} at step {trainer.clock.step}/{trainer.total_steps}")
            log.info(
                f"{cfg.method._target_.rsplit('.', 1)[-1]} on {data.name} with {type(model).__name__}: "
                f"{trainer.epochs} epochs, {trainer.total_steps} steps, device {trainer.device}"
            )
            trainer.fit()
            metrics, exported = trainer.test()
            report = method.report(trainer.model)
            if report:  # e.g. WaveQ's learned bit-widths: results.json "method", TensorBoard report/*
                results["method"] = report
                flat = flatten_numbers(report, "report")
                runlog.scalars(flat, trainer.clock.step, trainer.clock.epoch)
                metrics.update({f"method/{k}": v for k, v in report.items() if isinstance(v, (int, float))})
            sweep = None
            if run_ptq:
                sweep = sweep_network(
                    exported,
                    pairs,
                    ptq_settings,
                    data,
                    trainer.test_loader,
                    method,
                    int(cfg.seed),
                    trainer.test_outputs,
                )
                swept = ptq_scalars(sweep)
                runlog.scalars(swept, trainer.clock.step, trainer.clock.epoch)
                metrics.update(swept)
                results.update(ptq=sweep.entries, ptq_info=ptq_info(sweep, ptq_settings, pairs))
            runlog.hparams(cfg, metrics)
            timing = {**trainer.timing, "total_s": time.perf_counter() - started, "steps": trainer.clock.step}
            timing["step_ms"] = 1000.0 * timing["train_s"] / max(trainer.clock.step - (resume_step or 0), 1)
            if sweep is not None:
                timing["ptq_s"] = sweep.timing["total_s"]
            results.update(status="completed", metrics=metrics, timing=timing)
            write_json_atomic(results_path, results)
            print_summary(results, run_dir)
            if sweep is not None:
                print_ptq_table(sweep, "post-training quantization of the trained network")
            return results
        finally:
            if runlog is not None:
                runlog.close()


def flatten_numbers(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    """{"a": {"b": 1}} -> {"<prefix>/a/b": 1.0}: the numeric leaves of a nested dict."""
    flat: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(flatten_numbers(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"quantlab train — {results['status']}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["metrics"].items():
        if key.startswith(("test/", "val/", "train/", "best/")):
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    table.add_row("wall time (s)", f"{results['timing']['total_s']:.1f}")
    table.add_row("run dir", str(run_dir))
    console.print(table)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    results = run_command(run, cfg, "quantlab train")
    return results["metrics"].get("test/acc_exported")


if __name__ == "__main__":
    main()
