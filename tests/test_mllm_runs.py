"""Multimodal LM runs end to end: token data cache, training, resume, loading, and the four CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from detok.cli.main import main
from detok.config import ConfigError
from detok.data.shapes import HELD_OUT_PAIRS, ShapesDataset
from detok.engine.tasks import MLLMTask
from detok.io import Checkpoint, find_checkpoint
from detok.multimodal.sequences import TASKS
from detok.runs.config import tokenizer_config
from detok.runs.mllm import MLLMDataConfig, load_mllm, mllm_run_config, token_data, train_mllm
from detok.runs.train import train_tokenizer
from detok.tokenizers.load import load_tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ddt_run(tmp_path_factory) -> Path:
    """A 2-step ddt_tiny tokenizer run (K 16, V 64): its ids are what the LM reads."""
    out = tmp_path_factory.mktemp("ddt") / "run"
    train_tokenizer(tokenizer_config("ddt_tiny", ["quickstart_ddt"], [
        f"train.out_dir={out}", "train.max_steps=2", "train.global_batch_size=8", "data.shapes_size=64",
        "tokenizer.sample_steps=2", "train.progress=false"]), recon_images=0)
    return out


def _cfg(ddt_run: Path, out: Path, steps: int = 4, *extra: str):
    return mllm_run_config(["quickstart_mllm"], [
        "model=mllm_tiny", f"tokenizer={ddt_run}", f"train.out_dir={out}", f"train.max_steps={steps}",
        "train.ckpt_every=2", "train.global_batch_size=8", "data.size=48", "sample_prompts=0",
        "train.progress=false", *extra])


def test_token_data_is_cached_by_what_made_it_and_keeps_held_out_pairs_out(ddt_run, tmp_path):
    tok = load_tokenizer(ddt_run)
    data = MLLMDataConfig(size=24)
    first = token_data(tok, data, tmp_path, torch.device("cpu"), progress=False)
    assert first["codes"].shape == (24, 16) and first["target_codes"].shape == (24, 16)
    assert first["codes"].dtype == torch.long and int(first["codes"].max()) < 64
    assert torch.equal(first["codes"][3], tok.tokenize(ShapesDataset(24, 32, 0, "train", exclude_held_out=True)[3]
                                                        ["image"][None])[0])
    held = {f"{c} {k}" for c, k in HELD_OUT_PAIRS}
    assert not any(h in cap for cap in first["captions"] + first["target_captions"] for h in held)
    stamp = (tmp_path / "tokens.safetensors").stat().st_mtime_ns
    again = token_data(tok, data, tmp_path, torch.device("cpu"), progress=False)
    assert (tmp_path / "tokens.safetensors").stat().st_mtime_ns == stamp  # read back, not re-encoded
    assert torch.equal(again["codes"], first["codes"]) and again["instructions"] == first["instructions"]
    bigger = token_data(tok, MLLMDataConfig(size=30), tmp_path, torch.device("cpu"), progress=False)
    assert bigger["codes"].shape[0] == 30  # another key: encoded again


def test_task_mixture_follows_the_ratios_and_drops_text_for_cfg(ddt_run, tmp_path):
    cfg = _cfg(ddt_run, tmp_path / "run", 2)
    summary = train_mllm(cfg)
    run = load_mllm(summary["run_dir"])
    model = run["model"]
    task = MLLMTask(model, [1, 0, 0, 0, 0])  # t2i only
    batch = {"codes": torch.randint(0, 64, (64, 16)), "target_codes": torch.randint(0, 64, (64, 16)),
             "caption": [run["vocab"].encode_text("one small red circle")] * 64,
             "instruction": [run["vocab"].encode_text("make it red")] * 64}
    ids, mask, names = task.sequences(batch, torch.Generator().manual_seed(0))
    assert names == ["t2i"] * 64 and ids.shape == (64, model.cfg.text_slot + 16 + 3)
    null = (ids[:, 1:1 + model.cfg.text_slot] == run["vocab"].pad).all(1)  # the whole slot padded: the null prompt
    assert 0 < int(null.sum()) < 20  # text_dropout 0.1 of 64 rows
    with pytest.raises(ValueError, match="non-negative"):
        MLLMTask(model, [1, -1, 0, 0, 0])
    mixed = MLLMTask(model, [1, 1, 1, 1, 1])
    _, _, names = mixed.sequences({**batch, "codes": batch["codes"].repeat(8, 1),
                                   "target_codes": batch["target_codes"].repeat(8, 1),
                                   "caption": batch["caption"] * 8, "instruction": batch["instruction"] * 8},
                                  torch.Generator().manual_seed(1))
    assert all(60 < names.count(t) < 150 for t in TASKS), {t: names.count(t) for t in TASKS}  # 512 rows / 5


def _weights(run) -> dict[str, torch.Tensor]:
    path = find_checkpoint(run)
    return {**load_file(str(path / "weights.safetensors")),
            **{"ema." + k: v for k, v in load_file(str(path / "ema.safetensors")).items()}}


def test_resumed_mllm_run_equals_uninterrupted_bit_for_bit(ddt_run, tmp_path, monkeypatch):
    train_mllm(_cfg(ddt_run, tmp_path / "full", 4))
    real_step = MLLMTask.step

    def killed(self, batch, step, rng):
        if step == 2:
            raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")
        return real_step(self, batch, step, rng)

    monkeypatch.setattr(MLLMTask, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_mllm(_cfg(ddt_run, tmp_path / "resumed", 4))
    assert Checkpoint(tmp_path / "resumed").step == 2
    monkeypatch.setattr(MLLMTask, "step", real_step)
    train_mllm(_cfg(ddt_run, tmp_path / "resumed", 4), resume=True)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    with pytest.raises(ValueError, match="cannot resume"):  # another architecture into the same folder
        train_mllm(_cfg(ddt_run, tmp_path / "resumed", 6, "mllm.width=32"), resume=True)


def test_bad_runs_and_configs_are_refused_in_one_line(ddt_run, tmp_path):
    with pytest.raises(ConfigError, match="unknown multimodal model"):
        mllm_run_config([], ["model=mllm_huge"])
    with pytest.raises(ValueError, match="needs --tokenizer"):
        train_mllm(mllm_run_config([], [f"train.out_dir={tmp_path / 'x'}"]))
    with pytest.raises(ValueError, match="not a multimodal LM"):
        load_mllm(ddt_run)
    with pytest.raises(ConfigError, match="text_slot"):
        train_mllm(_cfg(ddt_run, tmp_path / "slot", 2, "mllm.text_slot=4"))
    with pytest.raises(ConfigError, match="all zeros"):
        train_mllm(_cfg(ddt_run, tmp_path / "mix", 2, *(f"mixture.{t}=0" for t in TASKS)))


def test_cli_generate_caption_edit(ddt_run, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "mllm", "--tokenizer", str(ddt_run), "--model", "mllm_tiny", "--config", "quickstart_mllm",
                 "--out", str(run), "train.max_steps=2", "train.global_batch_size=8", "data.size=32",
                 "sample_prompts=2", "train.progress=false"]) == 0
    assert (run / "samples.png").stat().st_size > 0 and (run / "vocab" / "text_tokenizer.json").is_file()
    texts = json.loads((run / "tokens" / "tokens.json").read_text())  # 32 training scenes: use words they hold
    assert main(["generate", str(run), "--prompt", texts["captions"][0], "--prompt", texts["captions"][1],
                 "-n", "3", "--cfg-scale", "2"]) == 0
    with Image.open(run / "generate.png") as im:
        assert im.size[0] > 3 * 32 and im.size[1] >= 2 * 32  # 2 rows of 3 images
    image = tmp_path / "scene.png"
    ShapesDataset(4, 32, 0, "val").render(ShapesDataset(4, 32, 0, "val").scene(0)).save(image)
    capsys.readouterr()
    assert main(["caption", str(run), str(image)]) == 0
    assert str(image) in capsys.readouterr().out
    assert main(["edit", str(run), str(image), "--instruction", texts["instructions"][0], "-n", "2"]) == 0
    assert (run / "edit.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "two purple zebras"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zebras" in err[0]
    assert main(["generate", str(run), "--prompt", " ".join(["red"] * 40)]) == 2
    assert "text slot" in capsys.readouterr().err
    assert main(["caption", str(run), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
