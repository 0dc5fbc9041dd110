"""The training loop. It knows the method protocol (quantlab.methods.base) and no method by name.

One step (`Trainer.train_step`): lr from the schedule → forward → cross-entropy + method.penalty
terms → backward (optional AMP, gradient clipping) → optimizer step → method.on_step. The loop
(`Trainer.fit`) logs running means every `log_every` steps, evaluates on validation every N epochs,
every N steps, or after every N-th batch of each epoch and at its end (`trainer.eval_unit`; the best
network is kept in checkpoints/best.pt) and writes checkpoints/last.pt. `test()`
loads the best checkpoint and reports both the trained network (`test/acc`) and
`method.export(model)` (`test/acc_exported`).
"""

from __future__ import annotations

import gc
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantlab import collective
from quantlab.data import DataBundle, EpochLoader, Shard, make_loader
from quantlab.engine import checkpoint, distributed, sync_bn
from quantlab.engine.console import interactive
from quantlab.engine.evaluate import autocast, evaluate, gradient_norms, resolve_device, weight_gradient_norms
from quantlab.engine.progress import Progress
from quantlab.engine.rundir import RunDir
from quantlab.engine.settings import TrainerSettings
from quantlab.errors import ConfigError, Diverged, Interrupted
from quantlab.methods.base import Method

log = logging.getLogger("quantlab")


@dataclass
class Clock:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches done in the current epoch


@dataclass
class StepResult:
    """What one optimizer step hands the loop; tensors stay on the device (no host sync per step)."""

    loss: Tensor
    correct: Tensor
    n: int
    terms: dict[str, Tensor]
    norms: dict[str, Tensor]
    logged: dict[str, float]
    lr: float


@dataclass
class Running:
    """Sums over the steps since the last log point, turned into the logged means by `means()`."""

    loss: Any = 0.0  # Σ loss · batch size
    correct: Any = 0
    n: int = 0
    steps: int = 0
    terms: dict[str, Any] = field(default_factory=dict)  # Σ of each penalty term
    logged: dict[str, float] = field(default_factory=dict)  # on_step values: the latest (β, λ, ...)
    lr: float = 0.0
    norms: dict[str, Any] = field(default_factory=dict)  # Σ of each gradient norm, over norm_steps
    norm_steps: int = 0

    def add(self, out: StepResult) -> None:
        self.loss = self.loss + out.loss * out.n
        self.correct = self.correct + out.correct
        self.n += out.n
        self.steps += 1
        for k, v in out.terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v
        self.logged.update(out.logged)
        if out.norms:
            for k, v in out.norms.items():
                self.norms[k] = self.norms.get(k, 0.0) + v
            self.norm_steps += 1
        self.lr = out.lr

    def means(self, world: int = 1) -> dict[str, float]:
        """The logged means; over the `world` processes of a distributed run (every rank calls it at
        the same steps): loss and accuracy over all their samples, penalty terms averaged."""
        keys = sorted(self.terms)
        sums = [float(self.loss), float(self.correct), float(self.n), *(float(self.terms[k]) for k in keys)]
        if world > 1:
            sums = collective.sum_over_ranks(torch.tensor(sums, dtype=torch.float64)).tolist()
        loss, correct, n, *terms = sums
        values = {"train/loss": loss / n, "train/acc": 100.0 * correct / n, "lr": float(self.lr)}
        values.update({f"method/{k}": v / world / self.steps for k, v in zip(keys, terms, strict=True)})
        values.update({f"method/{k}": float(v) for k, v in self.logged.items()})
        values.update({f"train/grad_norm_{k}": float(v) / self.norm_steps for k, v in self.norms.items()})
        return values

    def state(self) -> dict[str, Any]:
        """Plain numbers, for a checkpoint (a resumed run continues the same window)."""
        state = asdict(self)
        state.update(loss=float(self.loss), correct=int(self.correct))
        state.update(terms={k: float(v) for k, v in self.terms.items()})
        state.update(norms={k: float(v) for k, v in self.norms.items()})
        return state


@dataclass
class TestResult:
    """The final evaluation: metrics, the exported network, and what the PTQ sweep reuses."""

    metrics: dict[str, float]
    exported: nn.Module
    loader: EpochLoader  # the test batches, in the order `reference` holds their logits
    reference: list[tuple[Tensor, Tensor]] | None  # (logits, labels) of the exported network
    step: int
    epoch: int


class Trainer:
    """Drives one run: `fit()` trains with periodic evaluation and checkpoints, `test()` reports."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        data: DataBundle,
        settings: TrainerSettings,
        run_dir: Path,
        runlog: Any | None = None,  # quantlab.runs.runlog.RunLog: scalars(values, step, epoch), histograms
    ) -> None:
        s = self.settings = settings
        self.files = RunDir(run_dir)  # checkpoints/last.pt, best.pt, exported.pt
        self.device = resolve_device(s.device)
        self.method, self.data, self.runlog = method, data, runlog

        self.ranks = distributed.ranks()
        if self.ranks.active and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.ranks.local_rank)  # one GPU per process
        if self.ranks.world > 1 and s.batch_size % self.ranks.world:
            raise ConfigError(
                f"schedule.batch_size={s.batch_size}: the global batch must divide evenly over the "
                f"{self.ranks.world} processes"
            )

        self.model = method.prepare(model.to(self.device))
        #: the batch-norm classes `trainer.sync_bn` replaced, restored after training
        self.plain_bn: sync_bn.Originals = {}
        if s.sync_bn and self.ranks.active:
            double_backward = method.traits.double_backward
            self.model, self.plain_bn = sync_bn.synchronize(self.model, self.device, double_backward)
        self.channels_last = s.channels_last == "true" or (
            s.channels_last == "auto" and self.device.type == "cuda" and has_conv(self.model)
        )
        if self.channels_last:  # before the optimizer: its state takes the parameters' layout
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = method.optimizer(self.model, s.schedule)
        for group in self.opt.param_groups:
            group.setdefault("initial_lr", group["lr"])

        eval_bs = s.eval_batch_size or 2 * s.batch_size
        common = {"device": self.device, "num_workers": s.num_workers}
        shard = Shard(self.ranks.rank, self.ranks.world)  # each rank its part of every global batch
        train = {"train": True, "seed": s.seed, "shard": shard}
        self.train_loader = make_loader(data.train, s.batch_size, **train, **common)
        self.val_loader = (
            make_loader(data.val, eval_bs, train=False, seed=s.seed, **common)
            if data.val is not None
            else None
        )
        self.test_loader = make_loader(data.test, eval_bs, train=False, **common)

        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError("the training split is empty")
        if s.iterations:
            self.total_steps = s.iterations
            self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        else:
            self.epochs = int(s.epochs or 0)
            self.total_steps = self.epochs * self.steps_per_epoch

        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.amp or "")
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        traits = method.traits
        self.grad_norms_every = traits.grad_norms_every if s.grad_norms_every is None else s.grad_norms_every
        #: the model, or DistributedDataParallel over the processes of the run (gradients averaged)
        self.parallel = self.data_parallel(self.model) if self.ranks.active else self.model
        #: what the training step calls: `parallel`, or its torch.compile'd forward (same parameters)
        self.forward = self.compiled(self.parallel) if s.compile else self.parallel
        auto = "val/acc_exported" if traits.exported_differs else "val/acc"
        self.select_by = auto if s.select_by == "auto" else s.select_by

        self.clock = Clock()
        self.running = Running()
        self.last_eval_step: int | None = None
        self.last_saved_step: int | None = None  # the step of checkpoints/last.pt
        self.last_logged: dict[str, float] = {}
        self.best: dict[str, Any] | None = None  # {"metric", "score", "step"}
        self.timing = {"train_s": 0.0, "eval_s": 0.0}
        self.session_started = time.perf_counter()
        self.wall_before = 0.0  # wall time of earlier sessions, up to the checkpoint this one resumed
        #: a signal number, set (e.g. by a SIGTERM handler) to stop at the next step boundary
        self.stop_requested: int | None = None
        self.fitting = False  # inside fit(): a stop request is honoured at the next step boundary

    # -- one optimizer step and the loop ----------------------------------------------------------------

    def train_step(self, x: Tensor, y: Tensor) -> StepResult:
        """lr → forward → loss + method penalty → backward → clip → optimizer step → method.on_step."""
        lr_factor = self.settings.lr(self.clock.step, self.clock.epoch)
        for group in self.opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        norms = self.task_gradient_norms(loss) if self.norms_due() else {}
        terms = self.method.penalty(self.model, loss, (x, y))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss + sum(terms.values()) if terms else loss).backward()
        if self.settings.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        logged = self.method.on_step(self.model, self.clock.step, self.clock.epoch)
        correct = (logits.detach().argmax(1) == y).sum()
        terms = {k: v.detach() for k, v in terms.items()}
        return StepResult(
            loss.detach(), correct, len(y), terms, norms, logged, self.opt.param_groups[0]["lr"]
        )

    def end_parallel(self) -> None:
        """After training: drop the DistributedDataParallel wrapper (and its communication hooks)
        while the process group still exists; evaluation and export use the plain model."""
        if self.parallel is not self.model:
            # DDP hands rank 0's buffers to the others at the start of each forward; after the last
            # one each rank's batch-norm statistics moved on its own part of the batch: rank 0's win
            distributed.broadcast_tensors(list(self.model.buffers()))
            self.parallel = self.forward = self.model
            sync_bn.restore(self.model, self.plain_bn)
            gc.collect()

    def data_parallel(self, model: nn.Module) -> nn.Module:
        """The model wrapped in DistributedDataParallel: every rank starts from rank 0's parameters
        and buffers; batch-norm buffers follow rank 0's at each forward."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    def compiled(self, model: nn.Module) -> nn.Module:
        """torch.compile(model): one graph for its forward and one for its backward, recompiled only
        when shapes or the training mode change (β and other annealed values are tensors)."""
        if self.method.traits.double_backward:
            name = getattr(self.method, "name", self.method.describe())
            raise ConfigError(
                f"trainer.compile=true: method={name} differentiates through a gradient "
                "(double backpropagation), which torch.compile does not support; use trainer.compile=false "
                "or method.estimator=fd"
            )
        if self.grad_norms_every or self.method.traits.backward_twice:
            # The graph is backpropagated twice (the task-gradient norms, a finite-difference
            # penalty: autograd.grad with retain_graph=True, then the step's backward): the
            # compiled backward must neither donate nor overwrite in place the tensors it saved
            # (inductor's in-place reuse gave wrong second gradients at batch 64 on the CPU).
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
            return torch.compile(model, options={"inplace_buffers": False})
        return torch.compile(model)

    def fit(self, until: int | None = None) -> None:
        """Train until the step budget (or step `until`, a pause): log, evaluate, checkpoint when due."""
        clock, s = self.clock, self.settings
        stop = self.total_steps if until is None else min(until, self.total_steps)
        progress = Progress(self.total_steps, clock.step) if interactive() else None
        self.fitting = True
        try:
            while clock.step < stop:
                started = time.perf_counter()
                self.model.train()
                for x, y in self.train_loader.iterate(clock.epoch, clock.batch):
                    out = self.train_step(x, y)
                    clock.step, clock.batch = clock.step + 1, clock.batch + 1
                    self.running.add(out)
                    if clock.step % s.log_every == 0:
                        self.log_running()
                    if progress is not None:
                        progress.update(clock.step, clock.epoch, out.loss)
                    if self.eval_due():
                        self.validate()
                    if s.checkpoint_every_steps and clock.step % s.checkpoint_every_steps == 0:
                        self.save_last()
                    if self.stop_due():
                        self.stop(started)
                    if clock.step >= stop:
                        break
                self.timing["train_s"] += time.perf_counter() - started
                self.log_running()
                if clock.batch >= self.steps_per_epoch:  # else the step budget ended inside the epoch
                    self.end_epoch(started)
        finally:
            self.fitting = False
            if progress is not None:
                progress.stop()
        if self.stop_requested is not None:  # asked between the last step and here
            self.stop(time.perf_counter())
        if clock.step == self.total_steps and self.last_eval_step != clock.step:  # budget ended between evals
            self.validate()
            self.save_last()

    def eval_due(self) -> bool:
        """After a step: evaluate now? `step`: every eval_every steps; `batch`: after batch i of each
        epoch (0-based) when i % eval_every == 0 (md-bnn's `i % log_interval == 0`); `epoch`: at
        epoch ends only (`end_epoch`)."""
        s, clock = self.settings, self.clock
        if s.eval_unit == "step":
            return clock.step % s.eval_every == 0
        return s.eval_unit == "batch" and (clock.batch - 1) % s.eval_every == 0

    def epoch_eval_due(self) -> bool:
        """At an epoch's end: evaluate now? `epoch`: every eval_every epochs and after the last;
        `batch`: at every epoch's end (md-bnn), unless this step was just evaluated."""
        s, clock = self.settings, self.clock
        if s.eval_unit == "batch":
            return self.last_eval_step != clock.step
        return s.eval_unit == "epoch" and (clock.epoch % s.eval_every == 0 or clock.epoch == self.epochs)

    def stop_due(self) -> bool:
        """A stop was asked (of any process of the run: all stop at the same step)."""
        asked = self.stop_requested is not None
        if self.ranks.active and distributed.any_rank(asked):
            self.stop_requested = self.stop_requested or signal.SIGTERM
            return True
        return asked

    def stop(self, started: float) -> None:
        """Stop at this step boundary (a signal asked): checkpoint what is done (the running window
        too, so that a resume logs exactly what an uninterrupted run logs), then raise."""
        self.timing["train_s"] += time.perf_counter() - started
        self.save_last()
        signum, clock = int(self.stop_requested or 0), self.clock
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        raise Interrupted(f"stopped by {name} at step {clock.step} (epoch {clock.epoch + 1})", signum)

    def end_epoch(self, started: float) -> None:
        """Advance the clock; evaluate, draw histograms, checkpoint when due; one log line."""
        clock, s = self.clock, self.settings
        clock.epoch, clock.batch = clock.epoch + 1, 0
        if self.epoch_eval_due():
            self.validate()
        if self.runlog is not None and s.histogram_every and clock.epoch % s.histogram_every == 0:
            self.runlog.histograms(self.model, clock.step)
        if clock.epoch % s.checkpoint_every == 0:
            self.save_last()
        last = self.last_logged
        parts = [f"epoch {clock.epoch}/{self.epochs}", f"step {clock.step}/{self.total_steps}"]
        keys = ("train/loss", "train/acc", "val/acc", "val/acc_exported", "lr")
        parts += [f"{key} {last[key]:.4g}" for key in keys if key in last]
        log.info("  ".join([*parts, f"{time.perf_counter() - started:.1f}s"]))

    def norms_due(self) -> bool:
        return bool(self.grad_norms_every) and self.clock.step % self.grad_norms_every == 0

    def task_gradient_norms(self, loss: Tensor) -> dict[str, Tensor]:
        """ℓ1, ℓ2, ℓ∞ norms of ∇_W L (the task loss of the global batch; W: every weight tensor of ≥ 2
        dimensions)."""
        weights = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1]
        return weight_gradient_norms(loss, weights, retain_graph=True, over_ranks=self.ranks.active)

    def log_running(self) -> None:
        """Log the running means since the last log point, and start a new window. A non-finite
        loss or penalty stops the run here: the means are read on the host at log points only."""
        if self.running.steps:
            values = self.running.means(self.ranks.world)
            for key in ("train/loss", *sorted(k for k in values if k.startswith("method/"))):
                if key in values and not math.isfinite(values[key]):
                    self.diverged(f"{key} became {values[key]}")
            self.log(values)
            self.running = Running()

    def diverged(self, what: str) -> NoReturn:
        clock = self.clock
        kept = (
            f"the last finite checkpoint is kept (checkpoints/last.pt, step {self.last_saved_step})"
            if self.last_saved_step is not None
            else "no checkpoint had been written yet"
        )
        raise Diverged(
            f"{what} at step {clock.step} (epoch {clock.epoch + 1}); {kept}; "
            "try a lower learning rate (schedule.optimizer.lr) or trainer.grad_clip"
        )

    def check_finite_weights(self) -> None:
        """One host sync: every parameter and buffer finite, or the run stops (before a checkpoint
        with non-finite weights could replace a finite one)."""
        tensors = [t for t in (*self.model.parameters(), *self.model.buffers()) if t.is_floating_point()]
        if tensors and not bool(torch.stack([t.detach().isfinite().all() for t in tensors]).all()):
            self.diverged("the weights became non-finite")

    def log(self, values: dict[str, float]) -> None:
        self.last_logged = {**self.last_logged, **values}
        if self.runlog is not None:
            self.runlog.scalars(values, self.clock.step, self.clock.epoch)

    # -- validation, selection, checkpoints -----------------------------------------------------------

    def validate(self) -> dict[str, float]:
        """Evaluate on validation (and the exported network where it differs); keep the best. Only
        rank 0 evaluates (on the whole split: the numbers of a one-process run) and writes."""
        self.last_eval_step = self.clock.step
        if not self.ranks.main:
            return {}
        if self.val_loader is None:  # no validation split: the last network is the selected one
            self.save_best({})
            return {}
        started = time.perf_counter()
        values = self.evaluate_split("val", self.val_loader)
        self.timing["eval_s"] += time.perf_counter() - started
        self.log(values)
        score = self.score(values)
        if self.best is None or score > tuple(self.best["score"]):  # strictly better
            self.best = {
                "metric": float(values[self.select_by]),
                "score": list(score),
                "step": self.clock.step,
            }
            self.save_best(values)
        return values

    def score(self, values: dict[str, float]) -> tuple[float, ...]:
        """Higher is better: the selection metric (negated for a loss), with `select_ties=loss` ties
        broken by the lower loss; with `keep` only a strictly better metric wins (md-bnn)."""
        if self.select_by not in values:
            raise ValueError(f"trainer.select_by={self.select_by!r}: not among {sorted(values)}")
        metric = values[self.select_by]
        if "loss" in self.select_by:
            return (-metric,)
        if self.settings.select_ties == "keep":
            return (metric,)
        return (metric, -values.get(self.select_by.replace("acc", "loss"), 0.0))

    def evaluate_split(self, split: str, loader: EpochLoader) -> dict[str, float]:
        """The trained network (and its export, where it differs) on `split`; a validation split with
        augmentation (dataset.val_augment) draws its crops and flips from the step, both networks
        seeing the same ones."""
        top5, draw = self.data.top5, self.clock.step
        values = {
            f"{split}/{k}": v
            for k, v in evaluate(self.model, loader, top5, self.amp_dtype, epoch=draw).items()
        }
        if self.method.traits.exported_differs:
            raw = evaluate(self.method.export(self.model), loader, top5, self.amp_dtype, epoch=draw)
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
            "window": self.running.state(),
            "last_logged": self.last_logged,
            "timing": {**self.timing, "wall_s": self.wall_s()},
            "log_position": self.runlog.position() if self.runlog is not None else None,
            "rng": checkpoint.rng_state(),
        }

    def save_last(self) -> None:
        """checkpoints/last.pt. The parameters are the same on every rank: rank 0 writes them, with
        each rank's own logging window and RNG state (`ranks`), so that a resume is exact."""
        per_rank = {"window": self.running.state(), "rng": checkpoint.rng_state()}
        ranks = distributed.gather(per_rank) if self.ranks.active else None
        if not self.ranks.main:
            self.last_saved_step = self.clock.step
            return
        self.check_finite_weights()
        state = self.state() if ranks is None else {**self.state(), "ranks": ranks}
        checkpoint.atomic_save(state, self.files.last)
        self.last_saved_step = self.clock.step

    def save_best(self, values: dict[str, float]) -> None:
        self.check_finite_weights()
        state = {
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "step": self.clock.step,
            "epoch": self.clock.epoch,
            "metrics": values,
        }
        checkpoint.atomic_save(state, self.files.best)

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
        self.last_saved_step = self.clock.step
        self.best = state["best"]
        self.last_eval_step = state["last_eval_step"]
        own = state.get("ranks") or []
        if len(own) == self.ranks.world > 1:  # the same number of processes: each its own again
            state = {**state, **own[self.ranks.rank]}
        elif not self.ranks.main:  # another number of processes: rank 0 continues the window
            state = {**state, "window": asdict(Running())}
        self.running = Running(**state["window"])
        self.last_logged = state["last_logged"]
        self.timing = {k: v for k, v in state["timing"].items() if k != "wall_s"}
        self.wall_before = float(state["timing"].get("wall_s", 0.0))
        self.session_started = time.perf_counter()
        checkpoint.set_rng_state(state["rng"])

    # -- final evaluation -----------------------------------------------------------------------------

    def test(self) -> TestResult:
        """Load the best checkpoint, evaluate it and its export on the test set; save exported.pt."""
        best_path = self.files.best
        best_values: dict[str, float] = {}
        if best_path.exists():
            best = checkpoint.load(best_path, self.device)
            self.model.load_state_dict(best["model"])
            self.method.load_state_dict(best["method"])
            best_values = {**best["metrics"], "best/step": best["step"]}
        started = time.perf_counter()
        top5, loader = self.data.top5, self.test_loader
        metrics = {f"test/{k}": v for k, v in evaluate(self.model, loader, top5, self.amp_dtype).items()}
        exported = self.method.export(self.model)
        # The exported network's logits are the PTQ sweep's float reference (not under autocast).
        reference: list[tuple[Tensor, Tensor]] | None = [] if self.amp_dtype is None else None
        raw = evaluate(exported, loader, top5, self.amp_dtype, reference)
        metrics.update({f"test/{k}_exported": v for k, v in raw.items()})
        if self.grad_norms_every:  # Fig. 2 of the gradient-L1 paper: norms over the test batches
            norms = gradient_norms(exported, loader)
            metrics.update({f"test/grad_norm_{k}": v for k, v in norms.items()})
        self.timing["test_s"] = time.perf_counter() - started
        checkpoint.atomic_save({"model": exported.state_dict()}, self.files.exported)
        final_train = {k: v for k, v in self.last_logged.items() if k.startswith(("train/", "method/"))}
        metrics = {**final_train, **best_values, **metrics}
        return TestResult(metrics, exported, loader, reference, self.clock.step, self.clock.epoch)

    def wall_s(self) -> float:
        """Wall time of the run so far: earlier sessions up to their last checkpoint, plus this one."""
        return self.wall_before + time.perf_counter() - self.session_started

    def times(self) -> dict[str, float]:
        """train_s, eval_s, test_s (seconds, summed over sessions), steps, and step_ms = train_s / steps."""
        steps = self.clock.step
        return {**self.timing, "steps": steps, "step_ms": 1000.0 * self.timing["train_s"] / max(steps, 1)}


def has_conv(model: nn.Module) -> bool:
    """Whether the network has a 2-D convolution (where channels-last memory pays)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
