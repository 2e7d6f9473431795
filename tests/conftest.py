"""Shared test fixtures: fixture files beside the project, small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # test vectors of upstream code, vendored (README there)


def load_fixture(name: str) -> dict:
    """A vendored test-vector file; missing is an error, never a skip (the parity tests are detok's evidence)."""
    path = FIXTURES / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the parity fixtures ship with the repository (tests/fixtures)")
    return torch.load(path, weights_only=True)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models: 1 thread avoids OpenMP oversubscription when jobs share the cores


@pytest.fixture
def upstream_fixture():
    """Test vectors made by upstream l-DeTok's own code (tests/fixtures/upstream_ldetok_tiny.pt)."""
    return load_fixture("upstream_ldetok_tiny.pt")
