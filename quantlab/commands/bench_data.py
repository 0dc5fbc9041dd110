"""`quantlab bench data`: does the data or the compute bound a run? Three measurements, side by side.

  loader      each loader kind alone: a full pass over the training split (augmented, normalized,
              on the training device), images/s — `resident` (decoded once, augmented on the
              device per batch) and `torchvision[:workers]` (per-sample PIL transforms in a DataLoader)
  step        the model step alone (`Trainer.train_step`) on one batch already on the device
  epoch       a full training epoch through each loader kind: images/s, its ratio to the step alone
              (1.0: the data costs nothing), the share of wall time the host waited for a batch,
              and on CUDA the share of wall time the GPU was busy (kernel and copy intervals from
              torch.profiler, merged, over a window of steps after the epoch)

Without `--data-root` the data are CIFAR-10-shaped files of random pixels written in the real
on-disk format (the python pickle version) into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from quantlab.data import make_loader
from quantlab.data.cifar_files import write_cifar10_files
from quantlab.engine.console import console, print_rows
from quantlab.engine.trainer import Trainer
from quantlab.runs.components import method_overrides, trainer_for

KINDS = ("resident", "torchvision")


def loader_overrides(kind: str) -> list[str]:
    """`resident` | `torchvision[:workers]` (workers: an integer or auto) -> the overrides."""
    name, _, workers = kind.partition(":")
    if name not in KINDS or (name == "resident" and workers):
        raise ValueError(f"--loaders {kind}: must be resident or torchvision[:<workers>|:auto]")
    return [f"dataset.loader={name}", *([f"trainer.num_workers={workers}"] if workers else [])]


def busy_fraction(intervals: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """The share of [start, end] covered by the union of `intervals` (overlaps counted once)."""
    covered, reach = 0.0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in intervals):
        if b > reach:
            covered += b - max(a, reach)
            reach = b
    return covered / (end - start) if end > start else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainer(args: argparse.Namespace, root: Path, kind: str, tmp: Path) -> Trainer:
    overrides = [
        f"model={args.model}",
        f"dataset={args.dataset}",
        f"dataset.root={root}",
        f"dataset.verify={str(args.data_root is not None).lower()}",
        "dataset.val_size=0",  # the epoch is the whole training set
        f"schedule.batch_size={args.batch_size}",
        f"device={args.device}",
        *method_overrides(args.method),
        "trainer.grad_norms_every=0",
        *loader_overrides(kind),
        *args.overrides,
    ]
    trainer = trainer_for(overrides, tmp / kind.replace(":", "_"))
    trainer.model.train()
    trainer.clock.epoch = 1  # past the first epoch, where some penalties' schedules are still 0
    return trainer


def time_loader(trainer: Trainer, kind: str, warmup: int) -> dict:
    """One full pass (epoch 1) of a fresh training loader after `warmup` batches of epoch 0."""
    s = trainer.settings
    loader = make_loader(
        trainer.data.train,
        s.batch_size,
        train=True,
        seed=s.seed,
        device=trainer.device,
        num_workers=s.num_workers,
    )
    for i, _ in enumerate(loader.iterate(0)):
        if i + 1 >= warmup:
            break
    _sync(trainer.device)
    started, images = time.perf_counter(), 0
    for x, _ in loader.iterate(1):
        images += len(x)
    _sync(trainer.device)
    seconds = time.perf_counter() - started
    return {"stage": "loader", "what": kind, "images": images, "seconds": seconds}


def time_step(trainer: Trainer, steps: int, warmup: int) -> dict:
    """`steps` training steps on one batch already on the device (after `warmup` steps)."""
    x, y = next(iter(trainer.train_loader.iterate(0)))
    for _ in range(warmup):
        trainer.train_step(x, y)
    _sync(trainer.device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x, y)
    _sync(trainer.device)
    seconds = time.perf_counter() - started
    return {"stage": "step", "what": "(batch on device)", "images": steps * len(x), "seconds": seconds}


def _steps(trainer: Trainer, batches: Iterator, waits: list[float]) -> int:
    """Train on every batch of `batches`; the time spent waiting for each is appended to `waits`."""
    images = 0
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        waits.append(time.perf_counter() - asked)
        if batch is None:
            return images
        trainer.train_step(*batch)
        images += len(batch[1])


def time_epoch(trainer: Trainer, kind: str, warmup: int, profile_steps: int) -> dict:
    """A full training epoch (epoch 1) through the trainer's loader, after `warmup` steps of epoch 0;
    on CUDA then `profile_steps` steps of epoch 2 under torch.profiler for the GPU-busy share."""
    loader = trainer.train_loader
    warm = iter(loader.iterate(0))
    _steps(trainer, (next(warm) for _ in range(min(warmup, len(loader)))), [])
    del warm
    _sync(trainer.device)
    waits: list[float] = []
    started = time.perf_counter()
    images = _steps(trainer, iter(loader.iterate(1)), waits)
    _sync(trainer.device)
    seconds = time.perf_counter() - started
    row = {"stage": "epoch", "what": kind, "images": images, "seconds": seconds, "wait": sum(waits) / seconds}
    if trainer.device.type == "cuda" and profile_steps:
        row["gpu_busy"] = gpu_busy(trainer, profile_steps)
    return row


def gpu_busy(trainer: Trainer, steps: int) -> float:
    """The share of wall time the GPU ran kernels or copies over `steps` steps of epoch 2."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    batches = iter(trainer.train_loader.iterate(2))
    window = (batch for _, batch in zip(range(steps), batches, strict=False))
    _sync(trainer.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _steps(trainer, window, [])
        _sync(trainer.device)
    return profiled_busy(prof.events(), DeviceType.CUDA)


def profiled_busy(events: Sequence[Any], device_type: Any) -> float:
    """The share of the profiled span (first event's start to last event's end) covered by the
    events of `device_type` (torch.autograd.DeviceType); NaN when there are none."""
    spans = [(e.time_range.start, e.time_range.end) for e in events]
    device = [s for s, e in zip(spans, events, strict=True) if e.device_type == device_type]
    if not device:
        return float("nan")
    return busy_fraction(device, min(a for a, _ in spans), max(b for _, b in spans))


def run(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = args.data_root or write_cifar10_files(tmp / "data", args.num_train, args.batch_size)
        rows = []
        if "loader" in args.stages:
            for kind in args.loaders:
                rows.append(time_loader(_trainer(args, root, kind, tmp), kind, args.warmup))
        step_trainer = _trainer(args, root, args.loaders[0], tmp)
        device = str(step_trainer.device)
        step = time_step(step_trainer, args.steps, args.warmup)  # always: the others' yardstick
        del step_trainer
        rows.append(step)
        if "epoch" in args.stages:
            for kind in args.loaders:
                trainer = _trainer(args, root, kind, tmp)
                rows.append(time_epoch(trainer, kind, args.warmup, args.profile_steps))
                del trainer
    step_rate = step["images"] / step["seconds"]
    default = [r for r in rows if r["stage"] == "loader" and r["what"] == "torchvision:0"]
    default_rate = default[0]["images"] / default[0]["seconds"] if default else None
    for row in rows:
        row["images_per_s"] = row["images"] / row["seconds"]
        row["vs_step"] = row["images_per_s"] / step_rate
        if row["stage"] == "loader" and default_rate:
            row["vs_torchvision_0"] = row["images_per_s"] / default_rate
        row.update(model=args.model, method=args.method, batch_size=args.batch_size, device=device)
    return rows


def _share(row: dict, key: str) -> str:
    return f"{100 * row[key]:.0f} %" if key in row else ""


def print_results(rows: list[dict], args: argparse.Namespace) -> None:
    columns = {
        "stage": lambda r: r["stage"],
        "loader": lambda r: r["what"],
        "images/s": lambda r: f"{r['images_per_s']:,.0f}",
        "× tv:0": lambda r: f"{r['vs_torchvision_0']:.1f}x" if "vs_torchvision_0" in r else "",
        "÷ step": lambda r: f"{r['vs_step']:.2f}",
        "waits": lambda r: _share(r, "wait"),
        "GPU busy": lambda r: _share(r, "gpu_busy"),
    }
    device = rows[0]["device"]
    title = (
        f"quantlab bench data — {args.model} {args.method} on {args.dataset}, batch {args.batch_size}, "
        f"device {device}"
    )
    print_rows(title, columns, rows, left=("stage", "loader"))
    console.print(
        "images/s: whole passes (loader: the loader alone; step: one batch already on the device; epoch: "
        "a full training epoch); × tv:0: against torchvision's loader with no workers; ÷ step: against "
        "the step alone (1.00: data costs nothing); waits: wall time the host waited for a batch",
        highlight=False,
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="quantlab bench data", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18", help="a model option (conf/model)")
    p.add_argument("--method", default="float", help="name[:bitwidth][,key=value...], as in quantlab bench")
    p.add_argument("--dataset", default="cifar10", help="a conf/dataset option, read from --data-root")
    p.add_argument("--data-root", type=Path, default=None, help="default: CIFAR-10 files written")
    p.add_argument("--num-train", type=int, default=50_000, help="images written when no --data-root")
    p.add_argument(
        "--loaders",
        nargs="+",
        default=["resident", "torchvision:0", "torchvision:auto"],
        help="loader kinds: resident, torchvision[:<workers>|:auto]",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=("loader", "epoch"),
        default=["loader", "epoch"],
        help="what to time besides the model step alone (always timed: the others' yardstick)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps of the model step alone")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches/steps before each timing")
    p.add_argument("--profile-steps", type=int, default=50, help="steps profiled for GPU busy (CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.amp=bf16")
    args = p.parse_args(argv)
    for field in ("batch_size", "steps", "warmup", "num_train"):
        if getattr(args, field) <= 0:
            p.error(f"--{field.replace('_', '-')}={getattr(args, field)}: must be > 0")
    if args.data_root is None and args.dataset != "cifar10":
        p.error(f"--dataset={args.dataset}: needs --data-root (only cifar10 is written when none is given)")
    for kind in args.loaders:
        try:
            loader_overrides(kind)
        except ValueError as e:
            p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    print_results(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
