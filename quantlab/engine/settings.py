"""What the trainer reads of a run's config, typed and read once (not looked up every step)."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig

from quantlab.errors import ConfigError
from quantlab.schedules import Constant, Schedule


@dataclass(frozen=True)
class TrainerSettings:
    """What the trainer reads of a run's config (`trainer`, `schedule`, `seed`, `device`), typed once."""

    schedule: DictConfig  # the schedule group: the method builds its optimizer from it
    batch_size: int
    epochs: int | None  # train for epochs, or (epochs None) for `iterations` steps
    iterations: int | None
    lr: Schedule  # a factor on the optimizer's lr
    seed: int
    device: str
    amp: str | None  # None | bf16 | fp16 (autocast dtype; fp16 adds gradient scaling)
    channels_last: str  # auto (on for conv nets on CUDA) | true | false
    compile: bool  # torch.compile the model's forward and backward (first-order methods)
    sync_bn: bool  # under DDP: batch-norm statistics over the global batch (engine.sync_bn)
    grad_clip: float | None
    eval_every: int
    eval_unit: str  # epoch | step | batch (batch i of each epoch, i % eval_every == 0, and its end)
    select_by: str  # auto: val/acc_exported when the method's export differs, else val/acc
    select_ties: str  # loss: a tie in select_by goes to the lower loss | keep: strictly better only
    log_every: int
    histogram_every: int
    grad_norms_every: int | None  # None: the method's default
    checkpoint_every: int
    checkpoint_every_steps: int
    num_workers: int | str  # DataLoader workers; auto: the cores available to the process
    eval_batch_size: int | None  # None: 2 × batch_size

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainerSettings:
        """Every value from the config (conf/train.yaml and the schedule group are the one source of
        their defaults; an old run's config gets the settings added since it ran from
        runs.config.LEGACY before it comes here)."""
        t, s = cfg.trainer, cfg.schedule
        return cls(
            schedule=s,
            batch_size=int(s.batch_size),
            epochs=None if s.epochs is None else int(s.epochs),
            iterations=int(s.iterations) if s.iterations else None,
            lr=instantiate(s.lr) if s.get("lr") else Constant(1.0),  # a schedule group may have none
            seed=int(cfg.seed),
            device=str(cfg.device),
            amp=amp_setting(t.amp),
            channels_last=str(t.channels_last).lower(),
            compile=bool(t.compile),
            sync_bn=bool(t.sync_bn),
            grad_clip=float(t.grad_clip) if t.grad_clip else None,
            eval_every=int(t.eval_every),
            eval_unit=str(t.eval_unit),
            select_by=str(t.select_by),
            select_ties=str(t.select_ties),
            log_every=int(t.log_every),
            histogram_every=int(t.histogram_every or 0),
            grad_norms_every=None if t.grad_norms_every is None else int(t.grad_norms_every),
            checkpoint_every=int(t.checkpoint_every),
            checkpoint_every_steps=int(t.checkpoint_every_steps or 0),
            num_workers=t.num_workers if t.num_workers == "auto" else int(t.num_workers),
            eval_batch_size=int(t.eval_batch_size) if t.eval_batch_size is not None else None,
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
