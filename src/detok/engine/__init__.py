"""The one training engine (trainer, tasks, EMA) every run uses."""
