"""What each `detok` verb does, as library functions: the Python API (the CLI only parses and calls these).

    from detok.runs import tokenizer_config, train_tokenizer
    summary = train_tokenizer(tokenizer_config("detok_tiny", ["tokenizer_tiny"], ["train.max_steps=20"]))

Every function takes typed configs or plain arguments, writes its outputs into run folders and returns the
summary dict that the CLI prints. Names are imported lazily, so `import detok.runs` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ProbeConfig": "config", "TokenizerRunConfig": "config", "GeneratorRunConfig": "config",
    "SampleConfig": "config", "tokenizer_config": "config", "generator_config": "config",
    "generator_recipe": "config",
    "train_tokenizer": "train", "train_generator": "train",
    "reconstruct": "reconstruct", "reconstruct_run": "reconstruct",
    "encode": "encode",
    "sample_run": "sample", "save_class_grid": "sample",
    "evaluate": "evaluate", "score_sets": "fid", "read_image_set": "fid",
    "BenchConfig": "bench", "bench_tokenizers": "bench", "run_cell": "bench", "prepare_latents": "bench",
    "quickstart": "quickstart",
    "convert": "convert",
    "GenerationProbe": "probe",
    "MLLMRunConfig": "mllm", "mllm_run_config": "mllm", "train_mllm": "mllm", "load_mllm": "mllm",
    "generate": "mllm", "caption": "mllm", "edit": "mllm", "read_images": "mllm", "evaluate_mllm_run": "mllm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'detok.runs' has no attribute {name!r}")
    return getattr(importlib.import_module(f"detok.runs.{_EXPORTS[name]}"), name)
