"""Learning-rate and annealing schedules as small, stateless callables.

Every schedule maps ``(step, epoch) -> float``: ``step`` is the number of optimizer steps taken
before the current one (0-based) and ``epoch`` the 0-based epoch it belongs to. Being functions of
the clock alone, they resume exactly from a checkpoint with no state of their own.

Learning-rate schedules return a *factor* that multiplies the optimizer's base learning rate;
annealing schedules (β, λ) return the value itself.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

Unit = Literal["step", "epoch"]


class Schedule(Protocol):
    def __call__(self, step: int, epoch: int) -> float: ...


def _clock(unit: Unit, step: int, epoch: int) -> int:
    if unit not in ("step", "epoch"):
        raise ValueError(f"unit={unit!r}: must be 'step' or 'epoch'")
    return step if unit == "step" else epoch


class Constant:
    """value, always."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = float(value)

    def __call__(self, step: int, epoch: int) -> float:
        return self.value


class ExponentialStep:
    """start · scale^k, clipped at `cap`, with k the multiplications made before step t runs.

    The MD paper's β schedule (β ← β·beta_scale every beta_scale_interval iterations) and its
    learning-rate rule (lr ← lr·lr_scale every 30k iterations) are both this schedule. When the
    multiplication happens decides k:

    - `applied="before_step"` (default): before steps I, 2I, …: k = ⌊t/I⌋;
    - `applied="after_step"`: after steps 0, I, 2I, … (a loop that updates once its step is done,
      when `it % I == 0`, as md-bnn's does for β and its StepLR): k = ⌈t/I⌉, so step 0 runs at
      `start` and steps 1..I at start·scale;
    - `skip_first=True`: the first multiplication leaves the value as it was: k → max(0, k − 1).
      torch ≤ 1.0's `_LRScheduler.__init__` took `step(0)` itself and reset `last_epoch` to −1, so
      the first explicit `scheduler.step()` re-applied epoch 0 (md-bnn pins torch 0.4.0).

    `cap` bounds the value in the direction it moves: an upper bound when scale ≥ 1, a lower bound
    when scale < 1. `count_zero` is for the configs of runs started before `applied` existed: it
    means k = ⌊t/I⌋ + 1, the rule such a run trained with, so that it resumes as it ran.
    """

    def __init__(
        self,
        start: float = 1.0,
        scale: float = 1.0,
        interval: int = 1,
        cap: float | None = None,
        unit: Unit = "step",
        applied: Literal["before_step", "after_step"] = "before_step",
        skip_first: bool = False,
        count_zero: bool = False,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval={interval}: must be > 0")
        if scale <= 0:
            raise ValueError(f"scale={scale}: must be > 0")
        if applied not in ("before_step", "after_step"):
            raise ValueError(f"applied={applied!r}: must be before_step or after_step")
        self.start, self.scale, self.interval = float(start), float(scale), int(interval)
        self.cap, self.unit, self.applied = cap, unit, applied
        self.skip_first, self.count_zero = bool(skip_first), bool(count_zero)

    def multiplications(self, t: int) -> int:
        """k: how many times `scale` has multiplied the value that step (or epoch) t uses."""
        if self.count_zero:
            return t // self.interval + 1
        k = t // self.interval if self.applied == "before_step" else -(-t // self.interval)
        return max(0, k - 1) if self.skip_first else k

    def __call__(self, step: int, epoch: int) -> float:
        k = self.multiplications(_clock(self.unit, step, epoch))
        # Exponent in logs, clipped, so that huge k saturates at the cap instead of overflowing.
        value = self.start * math.exp(min(k * math.log(self.scale), 700.0))
        if self.cap is not None:
            value = min(value, self.cap) if self.scale >= 1 else max(value, self.cap)
        return value


class MultiStep:
    """Π of the gammas of the milestones ≤ t: the classic step decay at listed epochs or steps.

    `gamma` is one factor for every milestone, or a list with one factor per milestone (in the
    order listed), e.g. Foothill's "divide by 5 and by 2 alternately" = [0.2, 0.5, 0.2, ...].
    """

    def __init__(self, milestones: list[int], gamma: float | list[float] = 0.1, unit: Unit = "epoch") -> None:
        factors = [float(gamma)] * len(milestones) if isinstance(gamma, (int, float)) else list(gamma)
        if len(factors) != len(milestones):
            raise ValueError(f"gamma: {len(factors)} factors for {len(milestones)} milestones")
        steps = sorted(zip((int(m) for m in milestones), factors, strict=True))
        self.milestones = [m for m, _ in steps]
        self.gammas = [float(g) for _, g in steps]
        self.unit = unit

    def __call__(self, step: int, epoch: int) -> float:
        t = _clock(self.unit, step, epoch)
        return float(math.prod(g for m, g in zip(self.milestones, self.gammas, strict=True) if t >= m))


class Cosine:
    """final + (1 − final)·½(1 + cos(π·t/total)) for t < total, then `final`."""

    def __init__(self, total: int, final: float = 0.0, unit: Unit = "epoch") -> None:
        if total <= 0:
            raise ValueError(f"total={total}: must be > 0")
        self.total, self.final, self.unit = int(total), float(final), unit

    def __call__(self, step: int, epoch: int) -> float:
        t = min(_clock(self.unit, step, epoch), self.total)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t / self.total))


class LinearWarmup:
    """Linear warmup from `start_factor` to 1 over `warmup` units, multiplied by `after` (default 1).

    factor(t) = (start_factor + (1 − start_factor)·t / warmup) · after(t) for t < warmup, after(t) later
    (Goyal et al.'s gradual warmup, used by the MD paper's ImageNet runs).
    """

    def __init__(
        self, warmup: int, start_factor: float = 0.0, after: Schedule | None = None, unit: Unit = "epoch"
    ) -> None:
        self.warmup, self.start_factor, self.after, self.unit = int(warmup), float(start_factor), after, unit

    def __call__(self, step: int, epoch: int) -> float:
        t = _clock(self.unit, step, epoch)
        base = self.after(step, epoch) if self.after is not None else 1.0
        if self.warmup <= 0 or t >= self.warmup:
            return base
        return (self.start_factor + (1.0 - self.start_factor) * t / self.warmup) * base


class LinearRamp:
    """start → end linearly between t = begin and t = end_at; flat outside."""

    def __init__(
        self, start: float = 0.0, end: float = 1.0, begin: int = 0, end_at: int = 1, unit: Unit = "epoch"
    ) -> None:
        if end_at <= begin:
            raise ValueError(f"end_at={end_at}: must be > begin={begin}")
        self.start, self.end, self.begin, self.end_at, self.unit = start, end, begin, end_at, unit

    def __call__(self, step: int, epoch: int) -> float:
        t = _clock(self.unit, step, epoch)
        frac = min(max((t - self.begin) / (self.end_at - self.begin), 0.0), 1.0)
        return float(self.start + (self.end - self.start) * frac)


class LogEpoch:
    """scale · log(t) with t the 1-based epoch (Foothill, Sec. 4.1: λ = λ₀·log(t)); 0 in epoch 1."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)

    def __call__(self, step: int, epoch: int) -> float:
        return self.scale * math.log(epoch + 1)


class TanhRamp:
    """scale · ½(1 + tanh((t − center) / width)) — WaveQ's λ_q = 0.5(1 + tanh((epoch − 0.2E)/20))."""

    def __init__(
        self, scale: float = 1.0, center: float = 0.0, width: float = 1.0, unit: Unit = "epoch"
    ) -> None:
        if width <= 0:
            raise ValueError(f"width={width}: must be > 0")
        self.scale, self.center, self.width, self.unit = float(scale), float(center), float(width), unit

    def __call__(self, step: int, epoch: int) -> float:
        t = _clock(self.unit, step, epoch)
        return self.scale * 0.5 * (1.0 + math.tanh((t - self.center) / self.width))


class OffUntil:
    """0 before epoch `epoch` (0-based), then `then(step, epoch)` — e.g. a penalty in the last N epochs."""

    def __init__(self, epoch: int, then: Schedule | None = None, value: float = 1.0) -> None:
        self.epoch, self.then, self.value = int(epoch), then, float(value)

    def __call__(self, step: int, epoch: int) -> float:
        if epoch < self.epoch:
            return 0.0
        return self.then(step, epoch) if self.then is not None else self.value
