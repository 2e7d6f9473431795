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


def _block(marker: str) -> str:
    blocks = [b for b in python_blocks() if marker in b]
    assert len(blocks) == 1, f"{len(blocks)} README python blocks contain {marker!r}"
    return blocks[0]


def test_readme_opens_with_the_short_api_example():
    blocks = python_blocks()
    assert blocks and blocks[0].startswith("import detok\n") and "detok.sample(" in blocks[0]


@pytest.mark.slow
def test_readme_opening_example_runs_as_printed_on_quickstart_shaped_runs(tmp_path):
    """The first block, against tiny runs where `detok quickstart` puts its tokenizer and SiT."""
    from detok import runs

    tiny = ["train.progress=false", "train.global_batch_size=8", "train.max_steps=3", "data.shapes_size=160",
            "stats_images=32", "sample.per_class=1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setenv("DETOK_CACHE", str(tmp_path / "cache"))
        runs.train_tokenizer(runs.tokenizer_config(None, ["quickstart_shapes"], [
            "train.out_dir=runs/quickstart/tokenizer", *tiny[:-1], "tokenizer.encoder_size=tiny",
            "tokenizer.decoder_size=tiny"]), recon_images=0)
        runs.train_generator(runs.generator_config(family="sit", overrides=[
            "model=sit_tiny", "tokenizer=runs/quickstart/tokenizer", "train.out_dir=runs/quickstart/sit",
            "generator.sampler=euler", "generator.sample_steps=3", *tiny[:3], "train.max_steps=2"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETOK_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", python_blocks()[0]], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "(8, 8, 8, 8) (8, 3, 32, 32)"
    assert (tmp_path / "samples.png").is_file()


def test_readme_api_names_are_exported_from_detok_lazily():
    out = subprocess.run([sys.executable, "-c", "import sys, detok; assert 'torch' not in sys.modules; "
                          "print(callable(detok.sample), 'torch' in sys.modules)"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr


@pytest.mark.slow
def test_readme_python_api_block_runs_as_printed(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETOK_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", _block("from detok import registry, runs")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "runs/api/sit/samples/samples.npz").is_file()
    assert "lightningdit" in out.stdout.splitlines()[-1]


@pytest.mark.slow
def test_readme_multimodal_block_runs_as_printed(tmp_path):
    """The multimodal LM block: a DDT tokenizer, the LM over its ids and text, generate / caption / edit."""
    blocks = [_block("train_mllm")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DETOK_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    captions = ast.literal_eval(out.stdout.strip().splitlines()[-1])  # the printed list of two captions
    assert isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert (tmp_path / "runs/api/mllm/vocab/vocab.json").is_file()
