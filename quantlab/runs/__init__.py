"""What a run directory is, shared by every command: its config, what it builds, its guards,
results.json, metrics.jsonl and TensorBoard, and the PTQ sweep of its network."""
