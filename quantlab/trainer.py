"""The training loop. It knows the method protocol (quantlab.methods.base) and no method by name.

One step: lr from the schedule → forward → cross-entropy + method.penalty terms → backward
(optional AMP, gradient clipping) → optimizer step → method.on_step. Evaluation on validation
every N epochs or steps selects the best checkpoint; the final test evaluation loads it and reports
both the trained network (`test/acc`) and `method.export(model)` (`test/acc_exported`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from quantlab import checkpoint
from quantlab.console import console, interactive
from quantlab.data import DataBundle, EpochLoader, make_loader
from quantlab.methods.base import Method
from quantlab.runlog import RunLog
from quantlab.schedules import Constant

log = logging.getLogger("quantlab")


@dataclass
class Clock:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches done in the current epoch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name}: CUDA is not available on this machine; use device=cpu or auto")
    return device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: EpochLoader,
    top5: bool = False,
    amp_dtype: torch.dtype | None = None,
    outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict:
    """Top-1 accuracy (%), mean cross-entropy and, where asked, top-5 accuracy (%) over a loader.
    With `outputs`, each batch's (logits, labels) is appended to it (the PTQ sweep's float reference)."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    correct5 = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for x, y in loader:
        with _autocast(device, amp_dtype):
            logits = model(x)
        if outputs is not None:
            outputs.append((logits.detach().float(), y))
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
        if top5:
            k = min(5, logits.shape[1])
            correct5 += (logits.topk(k, 1).indices == y[:, None]).any(1).sum()
        count += len(y)
    model.train(was_training)
    out = {"acc": 100.0 * correct.item() / max(count, 1), "loss": loss_sum.item() / max(count, 1)}
    if top5:
        out["acc5"] = 100.0 * correct5.item() / max(count, 1)
    return out


def weight_gradient_norms(
    loss: torch.Tensor, weights: list[torch.Tensor], retain_graph: bool = False
) -> dict:
    """ℓ1, ℓ2, ℓ∞ norms (0-d tensors) of ∇_W L over the concatenation of the tensors `weights`."""
    grads = torch.autograd.grad(loss, weights, retain_graph=retain_graph, allow_unused=True)
    flat = torch.cat([g.detach().float().reshape(-1) for g in grads if g is not None])
    return {"l1": flat.abs().sum(), "l2": flat.norm(), "linf": flat.abs().max()}


def gradient_norms(model: nn.Module, loader: EpochLoader) -> dict[str, float]:
    """Mean over batches of the ℓ1, ℓ2, ℓ∞ norms of ∇_W L (W: every weight tensor of ≥ 2 dims), eval mode."""
    was_training = model.training
    model.eval()
    weights = [p for p in model.parameters() if p.ndim > 1]
    frozen = [p for p in weights if not p.requires_grad]  # e.g. an export's hard-quantized tensors
    for p in frozen:
        p.requires_grad_(True)
    sums: dict[str, float] = {}
    batches = 0
    with torch.enable_grad():
        for x, y in loader:
            norms = weight_gradient_norms(F.cross_entropy(model(x).float(), y), weights)
            sums = {k: sums.get(k, 0.0) + float(v) for k, v in norms.items()}
            batches += 1
    for p in frozen:
        p.requires_grad_(False)
    model.train(was_training)
    return {k: v / max(batches, 1) for k, v in sums.items()}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Trainer:
    """Drives one run: `fit()` trains with periodic evaluation and checkpoints, `test()` reports."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        data: DataBundle,
        cfg: DictConfig,
        run_dir: Path,
        runlog: RunLog | None = None,
    ) -> None:
        self.cfg, self.tcfg, self.sched = cfg, cfg.trainer, cfg.schedule
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = resolve_device(str(cfg.device))
        self.method, self.data, self.runlog = method, data, runlog

        self.model = method.prepare(model.to(self.device))
        self.opt = method.optimizer(self.model, self.sched)
        for group in self.opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.lr_factor = instantiate(self.sched.lr) if self.sched.get("lr") else Constant(1.0)

        bs, workers = int(self.sched.batch_size), int(self.tcfg.num_workers)
        eval_bs = int(self.tcfg.get("eval_batch_size") or 2 * bs)
        common = {"device": self.device, "num_workers": workers}
        self.train_loader = make_loader(data.train, bs, train=True, seed=int(cfg.seed), **common)
        self.val_loader = (
            make_loader(data.val, eval_bs, train=False, **common) if data.val is not None else None
        )
        self.test_loader = make_loader(data.test, eval_bs, train=False, **common)

        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError("the training split is empty")
        iterations = self.sched.get("iterations")
        if iterations:
            self.total_steps = int(iterations)
            self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        else:
            self.epochs = int(self.sched.epochs)
            self.total_steps = self.epochs * self.steps_per_epoch

        amp = bool(self.tcfg.get("amp", False))
        self.amp_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and self.device.type == "cuda")

        # Read once: the loop below runs every step and OmegaConf lookups are not free.
        t = self.tcfg
        self.grad_clip = float(t.grad_clip) if t.get("grad_clip") else None
        self.log_every, self.eval_every, self.eval_unit = int(t.log_every), int(t.eval_every), t.eval_unit
        self.ckpt_every_steps = int(t.get("checkpoint_every_steps") or 0)
        self.ckpt_every = int(t.get("checkpoint_every") or 1)
        self.hist_every = int(t.get("histogram_every") or 0)
        norms_every = t.get("grad_norms_every")
        self.grad_norms_every = int(method.grad_norms_every if norms_every is None else norms_every)
        unit = self.tcfg.get("select_by", "auto")
        self.select_by = (
            ("val/acc_exported" if method.exported_differs else "val/acc") if unit == "auto" else unit
        )
        self.clock = Clock()
        self.last_eval_step: int | None = None
        self.last_logged: dict[str, float] = {}
        self.best: dict[str, Any] | None = None  # {"metric": float, "step": int}
        self.window = self._empty_window()
        self.timing = {"train_s": 0.0, "eval_s": 0.0}
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # -- one optimizer step ---------------------------------------------------------------------------

    def set_lr(self) -> float:
        factor = self.lr_factor(self.clock.step, self.clock.epoch)
        for group in self.opt.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return self.opt.param_groups[0]["lr"]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One optimizer step on a batch; returns detached tensors and the method's logged values."""
        lr = self.set_lr()
        with _autocast(self.device, self.amp_dtype):
            logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y)
        norms = self._grad_norms(loss) if self._norms_due() else {}
        self.opt.zero_grad(set_to_none=True)
        terms = self.method.backward(self.model, loss, (x, y), self.scaler.scale)
        if self.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        logged = self.method.on_step(self.model, self.clock.step, self.clock.epoch)
        return {
            "loss": loss.detach(),
            "correct": (logits.detach().argmax(1) == y).sum(),
            "n": len(y),
            "terms": {k: v.detach() for k, v in terms.items()},
            "logged": logged,
            "norms": norms,
            "lr": lr,
        }

    def _norms_due(self) -> bool:
        return bool(self.grad_norms_every) and self.clock.step % self.grad_norms_every == 0

    def _grad_norms(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """ℓ1, ℓ2, ℓ∞ norms of ∇_W L (the task loss; W: every weight tensor of ≥ 2 dimensions)."""
        weights = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        return weight_gradient_norms(loss, weights, retain_graph=True)

    # -- the loop ---------------------------------------------------------------------------------

    def fit(self) -> None:
        progress = _Progress(self.total_steps, self.clock.step) if interactive() else None
        try:
            while self.clock.step < self.total_steps:
                self._run_epoch(progress)
        finally:
            if progress is not None:
                progress.stop()
        if self.last_eval_step != self.clock.step:  # the budget ended between two evaluations
            self.validate()
            self.save_last()

    def _run_epoch(self, progress: _Progress | None) -> None:
        clock = self.clock
        started = time.perf_counter()
        self.model.train()
        for x, y in self.train_loader.iterate(clock.epoch, clock.batch):
            out = self.train_step(x, y)
            clock.step += 1
            clock.batch += 1
            self._accumulate(out)
            if clock.step % self.log_every == 0:
                self._flush_window()
            if progress is not None:
                progress.update(clock, out)
            if self.eval_unit == "step" and clock.step % self.eval_every == 0:
                self.validate()
            if self.ckpt_every_steps and clock.step % self.ckpt_every_steps == 0:
                self.save_last()
            if clock.step >= self.total_steps:
                break
        self.timing["train_s"] += time.perf_counter() - started
        epoch_done = clock.batch >= self.steps_per_epoch
        self._flush_window()
        if not epoch_done:  # stopped by the iteration budget inside the epoch
            return
        epoch = clock.epoch
        clock.epoch, clock.batch = epoch + 1, 0
        if self.eval_unit == "epoch" and (clock.epoch % self.eval_every == 0 or clock.epoch == self.epochs):
            self.validate()
        if self.runlog is not None and self.hist_every and clock.epoch % self.hist_every == 0:
            self.runlog.histograms(self.model, clock.step)
        if clock.epoch % self.ckpt_every == 0:
            self.save_last()
        self._epoch_line(epoch, time.perf_counter() - started)

    def _epoch_line(self, epoch: int, seconds: float) -> None:
        last = self.last_logged
        parts = [f"epoch {epoch + 1}/{self.epochs}", f"step {self.clock.step}/{self.total_steps}"]
        for key in ("train/loss", "train/acc", "val/acc", "val/acc_exported", "lr"):
            if key in last:
                parts.append(f"{key} {last[key]:.4g}")
        parts.append(f"{seconds:.1f}s")
        log.info("  ".join(parts))

    # -- metrics windows ----------------------------------------------------------------------------

    def _empty_window(self) -> dict[str, Any]:
        return {
            "loss": 0.0,
            "correct": 0,
            "n": 0,
            "steps": 0,
            "terms": {},
            "logged": {},
            "lr": 0.0,
            "norms": {},
            "norm_steps": 0,
        }

    def _accumulate(self, out: dict[str, Any]) -> None:
        w = self.window
        w["loss"] = w["loss"] + out["loss"] * out["n"]
        w["correct"] = w["correct"] + out["correct"]
        w["n"] += out["n"]
        w["steps"] += 1
        for k, v in out["terms"].items():
            w["terms"][k] = w["terms"].get(k, 0.0) + v
        w["logged"].update(out["logged"])  # on_step values: the latest one is logged (β, λ, ...)
        if out["norms"]:
            for k, v in out["norms"].items():
                w["norms"][k] = w["norms"].get(k, 0.0) + v
            w["norm_steps"] += 1
        w["lr"] = out["lr"]

    def _flush_window(self) -> None:
        w = self.window
        if w["steps"] == 0:
            return
        values = {
            "train/loss": float(w["loss"]) / w["n"],
            "train/acc": 100.0 * float(w["correct"]) / w["n"],
            "lr": float(w["lr"]),
        }
        values.update({f"method/{k}": float(v) / w["steps"] for k, v in w["terms"].items()})
        values.update({f"method/{k}": float(v) for k, v in w["logged"].items()})
        values.update({f"train/grad_norm_{k}": float(v) / w["norm_steps"] for k, v in w["norms"].items()})
        self._log(values)
        self.window = self._empty_window()

    def _log(self, values: dict[str, float]) -> None:
        self.last_logged = {**self.last_logged, **values}
        if self.runlog is not None:
            self.runlog.scalars(values, self.clock.step, self.clock.epoch)

    # -- validation, selection, checkpoints -----------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Evaluate on validation (and the exported network where it differs); keep the best."""
        self.last_eval_step = self.clock.step
        if self.val_loader is None:  # no validation split: the last network is the selected one
            self.save_best({})
            return {}
        started = time.perf_counter()
        values = self._eval_split("val", self.val_loader)
        self.timing["eval_s"] += time.perf_counter() - started
        self._log(values)
        score = self._score(values)
        if self.best is None or score > tuple(self.best["score"]):
            self.best = {
                "metric": float(values[self.select_by]),
                "score": list(score),
                "step": self.clock.step,
            }
            self.save_best(values)
        return values

    def _score(self, values: dict[str, float]) -> tuple[float, float]:
        """Higher is better: the selection metric (negated for a loss), ties broken by lower loss."""
        if self.select_by not in values:
            raise ValueError(f"trainer.select_by={self.select_by!r}: not among {sorted(values)}")
        metric = values[self.select_by]
        if "loss" in self.select_by:
            return (-metric, 0.0)
        return (metric, -values.get(self.select_by.replace("acc", "loss"), 0.0))

    def _eval_split(self, split: str, loader: EpochLoader) -> dict[str, float]:
        top5 = self.data.top5
        raw = evaluate(self.model, loader, top5, self.amp_dtype)
        values = {f"{split}/{k}": v for k, v in raw.items()}
        if self.method.exported_differs:
            exported = self.method.export(self.model)
            raw = evaluate(exported, loader, top5, self.amp_dtype)
            values.update({f"{split}/{k}_exported": v for k, v in raw.items()})
        return values

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "clock": asdict(self.clock),
            "last_eval_step": self.last_eval_step,
            "best": self.best,
            "window": {
                **self.window,
                "loss": float(self.window["loss"]),
                "correct": int(self.window["correct"]),
                "terms": {k: float(v) for k, v in self.window["terms"].items()},
                "norms": {k: float(v) for k, v in self.window["norms"].items()},
            },
            "last_logged": self.last_logged,
            "timing": self.timing,
            "rng": checkpoint.rng_state(),
        }

    def save_last(self) -> None:
        checkpoint.atomic_save(self.state(), self.ckpt_dir / "last.pt")

    def save_best(self, values: dict[str, float]) -> None:
        state = {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "step": self.clock.step,
            "epoch": self.clock.epoch,
            "metrics": values,
        }
        checkpoint.atomic_save(state, self.ckpt_dir / "best.pt")

    def load(self, path: Path) -> None:
        """Continue from a last.pt file."""
        self.load_state(checkpoint.load(path, self.device))

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from a last.pt state: model, optimizer, method state, clock, RNG, logging window."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.clock = Clock(**state["clock"])
        self.best = state["best"]
        self.last_eval_step = state["last_eval_step"]
        self.window = {**self._empty_window(), **state["window"]}
        self.last_logged = state["last_logged"]
        self.timing = state["timing"]
        checkpoint.set_rng_state(state["rng"])

    # -- final evaluation -----------------------------------------------------------------------------

    def test(self) -> tuple[dict[str, float], nn.Module]:
        """Load the best checkpoint, evaluate it and its export on the test set; save exported.pt."""
        best_path = self.ckpt_dir / "best.pt"
        best_values: dict[str, float] = {}
        if best_path.exists():
            best = checkpoint.load(best_path, self.device)
            self.model.load_state_dict(best["model"])
            self.method.load_state_dict(best["method"])
            best_values = {**best["metrics"], "best/step": best["step"]}
        started = time.perf_counter()
        top5 = self.data.top5
        metrics = {
            f"test/{k}": v for k, v in evaluate(self.model, self.test_loader, top5, self.amp_dtype).items()
        }
        exported = self.method.export(self.model)
        # The exported network's logits are the PTQ sweep's float reference (not under autocast).
        self.test_outputs = [] if self.amp_dtype is None else None
        raw = evaluate(exported, self.test_loader, top5, self.amp_dtype, self.test_outputs)
        metrics.update({f"test/{k}_exported": v for k, v in raw.items()})
        if self.grad_norms_every:  # Fig. 2 of the gradient-L1 paper: norms over the test batches
            metrics.update(
                {f"test/grad_norm_{k}": v for k, v in gradient_norms(exported, self.test_loader).items()}
            )
        self.timing["test_s"] = time.perf_counter() - started
        checkpoint.atomic_save({"model": exported.state_dict()}, self.run_dir / "exported.pt")
        final_train = {k: v for k, v in self.last_logged.items() if k.startswith(("train/", "method/"))}
        return {**final_train, **best_values, **metrics}, exported


class _Progress:
    """A rich progress bar over the run's steps, with the latest loss."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("train", total=total, completed=done, epoch=0, loss="-")
        self.bar.start()

    def update(self, clock: Clock, out: dict[str, Any]) -> None:
        if clock.step % 10 == 0:
            self.bar.update(
                self.task, completed=clock.step, epoch=clock.epoch + 1, loss=f"{float(out['loss']):.4f}"
            )

    def stop(self) -> None:
        self.bar.stop()
