"""Build a Trainer from overrides alone, and read a method spec as the benchmarks take it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quantlab.engine.settings import TrainerSettings
from quantlab.engine.trainer import Trainer
from quantlab.runs.config import compose


def trainer_for(overrides: list[str], run_dir: Path, runlog: Any | None = None, seed: int = 0) -> Trainer:
    """A Trainer for the train config composed with `overrides` (model, method, data built with
    torch seeded with `seed`), writing into `run_dir`; no run directory is set up or locked."""
    from hydra.utils import instantiate

    cfg = compose(overrides)
    torch.manual_seed(seed)
    model, method, data = instantiate(cfg.model), instantiate(cfg.method), instantiate(cfg.dataset)
    return Trainer(model, method, data, TrainerSettings.from_config(cfg), Path(run_dir), runlog)


def method_overrides(spec: str) -> list[str]:
    """`name[:bitwidth][,key=value...]` (e.g. `md_tanh_s:ternary`, `grad_l1,estimator=fd`) -> the
    overrides selecting it; the bit-width defaults to binary (float ignores it). A key is the
    method's (`estimator=fd` -> `method.estimator=fd`) unless it is dotted: `float,trainer.compile=true`
    passes `trainer.compile=true` as it is."""
    head, *options = spec.split(",")
    name, _, bitwidth = head.partition(":")
    settings = [o if "." in o.partition("=")[0] else f"method.{o}" for o in options]
    return [f"method={name}", f"bitwidth={bitwidth or 'binary'}", *settings]
