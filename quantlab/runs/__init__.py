"""What a run is, shared by every command: its config (compose, validate, resume), the command line
parsed once (cmdline), the checks before anything is created (preflight), what it builds and a
finished run read back (components), the Hydra job and results.json, metrics.jsonl and TensorBoard,
the training session, the PTQ sweep of its network and its ONNX export. The names of a run
directory's files are quantlab.engine.rundir's."""
