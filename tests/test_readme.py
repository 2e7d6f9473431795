"""The README's Python API block runs exactly as printed (so it cannot go stale)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_a_python_api_example():
    blocks = python_blocks()
    assert blocks and "from detok import" in blocks[0]


@pytest.mark.slow
def test_readme_python_api_block_runs_as_printed(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETOK_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", python_blocks()[0]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs/api/sit/samples/samples.npz").is_file()
    assert "lightningdit" in out.stdout.splitlines()[-1]


@pytest.mark.slow
def test_readme_multimodal_block_runs_as_printed(tmp_path):
    """The multimodal LM block: a DDT tokenizer, the LM over its ids and text, generate / caption / edit."""
    blocks = [b for b in python_blocks() if "train_mllm" in b]
    assert len(blocks) == 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETOK_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    captions = ast.literal_eval(out.stdout.strip().splitlines()[-1])  # the printed list of two captions
    assert isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert (tmp_path / "runs/api/mllm/vocab/vocab.json").is_file()
