"""Evaluation: reconstruction metrics (and, in later issues, generation metrics)."""
