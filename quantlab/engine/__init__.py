"""The engine below the commands: the training loop, evaluation, checkpoints, atomic files, console."""
