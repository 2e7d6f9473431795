"""Shared test fixtures: fixture files beside the project, small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # tiny models: 1 thread avoids OpenMP oversubscription when jobs share the cores


@pytest.fixture
def upstream_fixture():
    """Test vectors made by upstream l-DeTok's own code (../shared/fixtures); skipped where absent."""
    path = FIXTURES / "upstream_ldetok_tiny.pt"
    if not path.exists():
        pytest.skip(f"{path} not present (it lives beside the project, not in it)")
    return torch.load(path, weights_only=True)
