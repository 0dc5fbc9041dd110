"""`quantlab bench ptq`: the cost of a PTQ sweep of K pairs, in float test-set evaluations.

For each model, in interleaved rounds on the same synthetic test set (a randomly initialised
network whose batch-norm statistics were collected on the data): one float evaluation (the
trainer's `evaluate`), the sweep as `quantlab train` runs it (float logits reused from the test
evaluation) and the sweep as `quantlab ptq` runs it (the float network evaluated in the same pass).
Reported, as medians over rounds of ratios taken within a round:
  sweep / (K x float eval)   with the calibration pass excluded (it is reported separately),
  calibration / float eval,  and the `quantlab ptq` sweep / (K x float eval).
With `--algorithms`, one row per PTQ algorithm (nearest, adaround in the fast setting of
conf/ptq_setup/default.yaml, bias_correction, equalize): what each adds to the sweep, in the same units.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from quantlab.data import make_loader
from quantlab.engine.console import print_rows
from quantlab.engine.evaluate import evaluate, resolve_device
from quantlab.quant.sweep import run_sweep as sweep
from quantlab.runs.config import compose, ptq_defaults


def _parse_pair(text: str) -> tuple[int, int | None]:
    w, _, a = text.partition(",")
    return int(w), (None if a in ("", "fp", "null") else int(a))


def _setup(model: str, args: argparse.Namespace):
    from hydra.utils import instantiate

    cfg = compose(
        [
            f"model={model}",
            "dataset=synthetic",
            f"dataset.shape=[3,{args.image_size},{args.image_size}]",
            f"dataset.num_train={args.batch_size * 8}",
            "dataset.num_val=0",
            f"dataset.num_test={args.test_size}",
        ]
    )
    torch.manual_seed(0)
    data = instantiate(cfg.dataset)
    device = resolve_device(args.device)
    net = instantiate(cfg.model).to(device)
    calib = make_loader(data.train, args.batch_size, train=True, device=device)
    test = make_loader(data.test, args.batch_size, train=False, device=device)
    net.train()
    with torch.no_grad():  # realistic batch-norm statistics
        for x, _ in calib:
            net(x)
    return net.eval(), calib, test, device


def _timed(device: torch.device, fn, *args, **kwargs):
    """(seconds, result) of fn(*args, **kwargs), with the GPU synchronised around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, out


def algorithm_settings(name: str, args: argparse.Namespace):
    """The ptq settings of one algorithm row (the others at their defaults)."""
    given: dict = {
        "nearest": {},
        "adaround": {
            "weight_rounding": "adaround",
            "adaround": {**ptq_defaults().adaround, "iterations": args.adaround_iterations, "samples": 256},
        },
        "bias_correction": {"bias_correction": True},
        "equalize": {"equalize": True},
    }[name]
    return ptq_defaults(act_range=args.act_range, calibration_batches=args.calibration_batches, **given)


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for algorithm in args.algorithms:
        for row in run_algorithm(args, algorithm_settings(algorithm, args)):
            rows.append({**row, "algorithm": algorithm})
    plain = {r["model"]: r["sweep_over_k_evals"] for r in rows if r["algorithm"] == "nearest"}
    for r in rows:  # the algorithm's sweep as a ratio to a plain (round-to-nearest) one, per pair
        r["over_nearest"] = r["sweep_over_k_evals"] / plain[r["model"]] if r["model"] in plain else None
    return rows


def run_algorithm(args: argparse.Namespace, settings) -> list[dict]:
    pairs = [_parse_pair(p) for p in args.pairs]
    k = len(pairs)
    rows = []
    for model in args.model:
        net, calib, test, device = _setup(model, args)
        outputs: list = []
        evaluate(net, test, outputs=outputs)  # warm-up, and the cached float logits
        sweep(net, pairs[:1], settings, calib, test, reference=outputs)
        ratio_train, ratio_calib, ratio_cmd, floats = [], [], [], []
        for _ in range(args.rounds):
            t_float, _ = _timed(device, evaluate, net, test)
            t_train, res = _timed(device, sweep, net, pairs, settings, calib, test, reference=outputs)
            t_cmd, res_cmd = _timed(device, sweep, net, pairs, settings, calib, test)
            floats.append(t_float)
            ratio_train.append((t_train - res.timing["calibration_s"]) / (k * t_float))
            ratio_calib.append(res.timing["calibration_s"] / t_float)
            ratio_cmd.append((t_cmd - res_cmd.timing["calibration_s"]) / (k * t_float))
        rows.append(
            {
                "model": model,
                "device": str(device),
                "pairs": k,
                "float_eval_s": statistics.median(floats),
                "sweep_over_k_evals": statistics.median(ratio_train),
                "calibration_over_eval": statistics.median(ratio_calib),
                "ptq_command_over_k_evals": statistics.median(ratio_cmd),
            }
        )
    return rows


def print_results(rows: list[dict], args: argparse.Namespace) -> None:
    columns = {
        "model": lambda r: r["model"],
        "algorithm": lambda r: r["algorithm"],
        "device": lambda r: r["device"],
        "float eval (s)": lambda r: f"{r['float_eval_s']:.3f}",
        "sweep / K evals": lambda r: f"{r['sweep_over_k_evals']:.2f}x",
        "calibration / eval": lambda r: f"{r['calibration_over_eval']:.2f}x",
        "ptq cmd / K evals": lambda r: f"{r['ptq_command_over_k_evals']:.2f}x",
        "sweep / nearest's": lambda r: "—" if r.get("over_nearest") is None else f"{r['over_nearest']:.1f}x",
    }
    title = f"quantlab bench ptq — {len(args.pairs)} pairs, act_range={args.act_range}"
    print_rows(title, columns, rows, left=("model", "algorithm", "device"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="quantlab bench ptq", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", default=["small_cnn", "resnet18"], help="model options (conf/model)")
    p.add_argument(
        "--pairs", nargs="+", default=["8,8", "6,6", "4,4", "3,3", "2,2"], help="w,a pairs (a: fp = float)"
    )
    p.add_argument("--act-range", default="bn", choices=["bn", "minmax", "percentile", "mse"])
    p.add_argument(
        "--algorithms",
        nargs="+",
        default=["nearest"],
        choices=["nearest", "adaround", "bias_correction", "equalize"],
        help="one row per PTQ algorithm",
    )
    p.add_argument("--adaround-iterations", type=int, default=1000, help="AdaRound steps per layer")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--test-size", type=int, default=2048)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    for field in ("batch_size", "test_size", "image_size", "calibration_batches", "rounds"):
        if getattr(args, field) <= 0:
            p.error(f"--{field.replace('_', '-')}={getattr(args, field)}: must be > 0")
    try:
        [_parse_pair(x) for x in args.pairs]
    except ValueError:
        p.error(f"--pairs {' '.join(args.pairs)}: each pair is W,A with integer bits (A may be fp)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    print_results(run(args), args)
