"""What the trainer reads of a run's config, typed and read once (not looked up every step)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.utils import instantiate
from omegaconf import DictConfig

from quantlab.errors import ConfigError
from quantlab.schedules import Constant, Schedule


@dataclass(frozen=True)
class TrainerSettings:
    """What the trainer reads of a run's config (`trainer`, `schedule`, `seed`, `device`), typed once."""

    schedule: DictConfig  # the schedule group: the method builds its optimizer from it
    batch_size: int
    epochs: int | None = None  # train for epochs, or (epochs None) for `iterations` steps
    iterations: int | None = None
    lr: Schedule = field(default_factory=lambda: Constant(1.0))  # a factor on the optimizer's lr
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # None | bf16 | fp16 (autocast dtype; fp16 adds gradient scaling)
    channels_last: str = "auto"  # auto (on for conv nets on CUDA) | true | false
    compile: bool = False  # torch.compile the model's forward and backward (first-order methods)
    sync_bn: bool = False  # under DDP: batch-norm statistics over the global batch (engine.sync_bn)
    grad_clip: float | None = None
    eval_every: int = 1
    eval_unit: str = "epoch"  # epoch | step | batch (batch i of each epoch, i % eval_every == 0, and its end)
    select_by: str = "auto"  # auto: val/acc_exported when the method's export differs, else val/acc
    select_ties: str = "loss"  # loss: a tie in select_by goes to the lower loss | keep: strictly better only
    log_every: int = 50
    histogram_every: int = 0
    grad_norms_every: int | None = None  # None: the method's default
    checkpoint_every: int = 1
    checkpoint_every_steps: int = 0
    num_workers: int | str = "auto"  # DataLoader workers; auto: the cores available to the process
    eval_batch_size: int | None = None  # None: 2 × batch_size

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainerSettings:
        t, s = cfg.trainer, cfg.schedule
        norms_every = t.get("grad_norms_every")
        return cls(
            schedule=s,
            batch_size=int(s.batch_size),
            epochs=None if s.get("epochs") is None else int(s.epochs),
            iterations=int(s.iterations) if s.get("iterations") else None,
            lr=instantiate(s.lr) if s.get("lr") else Constant(1.0),
            seed=int(cfg.seed),
            device=str(cfg.device),
            amp=amp_setting(t.get("amp", False)),
            channels_last=str(t.get("channels_last", "auto")).lower(),
            compile=bool(t.get("compile", False)),
            sync_bn=bool(t.get("sync_bn", False)),
            grad_clip=float(t.grad_clip) if t.get("grad_clip") else None,
            eval_every=int(t.eval_every),
            eval_unit=str(t.eval_unit),
            select_by=str(t.get("select_by", "auto")),
            select_ties=str(t.get("select_ties", "loss")),
            log_every=int(t.log_every),
            histogram_every=int(t.get("histogram_every") or 0),
            grad_norms_every=None if norms_every is None else int(norms_every),
            checkpoint_every=int(t.get("checkpoint_every") or 1),
            checkpoint_every_steps=int(t.get("checkpoint_every_steps") or 0),
            num_workers=t.num_workers if t.num_workers == "auto" else int(t.num_workers),
            eval_batch_size=int(t.eval_batch_size) if t.get("eval_batch_size") else None,
        )


AMP = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16"}


def amp_setting(value: object) -> str | None:
    """trainer.amp: false/null (float32), true or bf16 (bfloat16 autocast), fp16 (float16 + gradient
    scaling). Anything else is a ConfigError naming the field."""
    if value is None or value is False:
        return None
    if value is True:
        return "bf16"
    if isinstance(value, str) and value.lower() in AMP:
        return AMP[value.lower()]
    raise ConfigError(f"trainer.amp={value!r}: must be false, bf16, fp16 (or true: bf16)")
