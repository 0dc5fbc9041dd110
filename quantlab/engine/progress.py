"""A rich progress bar over a run's optimizer steps (on a terminal; off one, the trainer logs one line
per epoch instead)."""

from __future__ import annotations

from quantlab.engine.console import console


class Progress:
    """A rich progress bar over the run's steps, with the latest loss."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(
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

    def update(self, step: int, epoch: int, loss: float | object) -> None:
        """Every 10 steps (a loss tensor is read only then: one host sync per 10 steps)."""
        if step % 10 == 0:
            self.bar.update(self.task, completed=step, epoch=epoch + 1, loss=f"{float(loss):.4f}")

    def stop(self) -> None:
        self.bar.stop()
