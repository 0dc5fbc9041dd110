"""`quantlab bench`: training throughput of methods side by side, as ratios to `float`.

All methods of a model are built first, then timed in interleaved rounds (float, m1, m2, ...,
float, m1, ...) on the same synthetic batch stream, so that machine noise hits them alike. Each
measures real optimizer steps through `Trainer.train_step` (forward, penalty, backward, step,
on_step). Reported: images/s (median over rounds) and the step time relative to float, the
median over rounds of the ratio of the two timings taken moments apart in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from quantlab.engine.console import print_rows
from quantlab.engine.trainer import Trainer
from quantlab.runs.components import method_overrides, trainer_for


def _build(model: str, method: str, args: argparse.Namespace, tmp: Path) -> Trainer:
    overrides = [
        f"model={model}",
        "dataset=synthetic",
        f"dataset.shape=[{args.channels},{args.image_size},{args.image_size}]",
        f"dataset.num_classes={args.num_classes}",
        f"dataset.num_train={args.batch_size * 4}",
        "dataset.num_val=0",
        f"dataset.num_test={args.batch_size}",
        f"schedule.batch_size={args.batch_size}",
        f"device={args.device}",
        *method_overrides(method),
        "trainer.grad_norms_every=0",  # time the method's step alone
        *args.overrides,
    ]
    trainer = trainer_for(overrides, tmp / method)
    trainer.model.train()
    # time a step from the second epoch on: penalties whose schedule is 0 in the first epoch
    # (the Foothill paper's λ₀·log t) would otherwise be skipped
    trainer.clock.epoch = 1
    return trainer


def _time_steps(trainer, steps: int) -> float:
    batches = []
    while len(batches) < steps:
        batches += list(trainer.train_loader.iterate(len(batches)))
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for x, y in batches[:steps]:
        trainer.train_step(x, y)
        trainer.clock.step += 1
    sync()
    return (time.perf_counter() - started) / steps


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    methods = args.methods if args.methods[0] == "float" else ["float", *args.methods]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model:
            trainers = {m: _build(model, m, args, Path(tmp)) for m in methods}
            for trainer in trainers.values():  # warm-up: allocator, autotuning, lazy init
                _time_steps(trainer, args.warmup)
            times: dict[str, list[float]] = {m: [] for m in methods}
            for _ in range(args.rounds):
                for m, trainer in trainers.items():
                    times[m].append(_time_steps(trainer, args.steps))
            for m in methods:
                t = statistics.median(times[m])
                # Paired per round (float and m timed moments apart), so that machine noise cancels.
                ratio = statistics.median(a / b for a, b in zip(times[m], times["float"], strict=True))
                rows.append(
                    {
                        "model": model,
                        "method": m,
                        "batch_size": args.batch_size,
                        "device": str(trainers[m].device),
                        "step_ms": 1000 * t,
                        "images_per_s": args.batch_size / t,
                        "ratio_to_float": ratio,
                    }
                )
            del trainers
    return rows


def print_results(rows: list[dict]) -> None:
    columns = {
        "model": lambda r: r["model"],
        "method": lambda r: r["method"],
        "device": lambda r: r["device"],
        "batch": lambda r: str(r["batch_size"]),
        "ms/step": lambda r: f"{r['step_ms']:.1f}",
        "images/s": lambda r: f"{r['images_per_s']:.1f}",
        "× float": lambda r: f"{r['ratio_to_float']:.2f}x",
    }
    title = "quantlab bench — training step time, side by side"
    print_rows(title, columns, rows, left=("model", "method", "device"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="quantlab bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["resnet18"], help="model options (conf/model)")
    p.add_argument(
        "--methods",
        nargs="+",
        default=["float"],
        help="method options: name[:bitwidth][,key=value...], e.g. md_tanh_s:ternary, grad_l1,estimator=fd "
        "or float,trainer.compile=true (a dotted key is passed as it is)",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="timed steps per method per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.amp=true")
    args = p.parse_args(argv)
    for field in ("batch_size", "steps", "rounds", "image_size", "channels", "num_classes"):
        if getattr(args, field) <= 0:
            p.error(f"--{field.replace('_', '-')}={getattr(args, field)}: must be > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    print_results(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
