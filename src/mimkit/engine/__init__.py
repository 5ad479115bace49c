"""The one training loop (devices, DDP, precision, schedule, checkpoints, resume, signals, metrics, progress)."""
