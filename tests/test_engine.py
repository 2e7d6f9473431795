"""The engine: schedules, EMA, atomic checkpoints, exact resume, non-finite losses, data order."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from detok.engine.ema import EMA
from detok.engine.tasks import TokenizerTask
from detok.engine.trainer import NonFiniteLoss, OptimConfig, StepSampler, Task, TrainConfig, Trainer
from detok.io import Checkpoint, find_checkpoint, save_checkpoint
from detok.nn.optim import lr_at, split_decay
from detok.runs.config import tokenizer_config
from detok.runs.train import train_tokenizer


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 1.0, 100, 10) == 0.0
    assert lr_at(5, 1.0, 100, 10) == pytest.approx(0.5)
    assert lr_at(10, 1.0, 100, 10) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 100, 10) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 100, 10, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(70, 2.0, 100, 10, kind="constant") == 2.0


def test_ema_formula_by_name():
    model = nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[n], 0.9 * before[n] + 0.1 * p.detach())
    copy = nn.Linear(3, 2)
    ema.copy_to(copy)
    torch.testing.assert_close(copy.weight, ema.shadow["weight"])


def test_weight_decay_groups_follow_upstream_names():
    model = nn.ModuleDict({"blocks": nn.Linear(4, 4), "patch_embed": nn.Conv2d(3, 4, 2), "norm": nn.LayerNorm(4)})
    decay, plain = split_decay(list(model.named_parameters()), 0.1, OptimConfig().no_decay)
    assert [p.shape for p in decay["params"]] == [(4, 4)]  # only the block matrix decays
    assert len(plain["params"]) == 5 and plain["weight_decay"] == 0.0


def test_checkpoint_is_atomic_and_keeps_the_newest(tmp_path):
    w = {"model": {"a": torch.arange(3.0)}}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, kind="toy", weights=w, config={"x": step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000002", "step-00000003"]
    ck = Checkpoint(tmp_path)
    assert ck.step == 3 and ck.config == {"x": 3} and ck.kind == "toy"
    torch.testing.assert_close(ck.module_state("model")["a"], torch.arange(3.0))
    # a half-written checkpoint (killed mid-save) is never what `latest` points to
    (tmp_path / "checkpoints" / ".tmp-step-00000004").mkdir()
    assert find_checkpoint(tmp_path).name == "step-00000003"
    with pytest.raises(FileNotFoundError, match="no such run"):
        find_checkpoint(tmp_path / "nope")


def test_sampler_resumes_mid_epoch_exactly():
    full = StepSampler(40, 4, 2, 1, seed=3)
    it = iter(full)
    batches = [next(it) for _ in range(12)]  # 5 steps per epoch: crosses two epoch boundaries
    resumed = iter(StepSampler(40, 4, 2, 1, seed=3, start_step=7))
    assert [next(resumed) for _ in range(5)] == batches[7:]
    other = iter(StepSampler(40, 4, 2, 0, seed=3))
    first = next(other)
    assert not set(first) & set(batches[0]), "ranks see disjoint indices"


def _tiny_cfg(tmp_path, name: str, **extra):
    overrides = [
        f"train.out_dir={tmp_path / name}", "train.max_steps=4", "train.ckpt_every=2",
        "disc_start_epoch=0.25",  # 8 steps per epoch -> the GAN starts at step 2
    ] + [f"{k}={v}" for k, v in extra.items()]
    return tokenizer_config(None, ["tokenizer_tiny"], overrides)


def _weights(run) -> dict[str, torch.Tensor]:
    path = find_checkpoint(run)
    return {**load_file(str(path / "weights.safetensors")), **{"ema." + k: v for k, v in
                                                                 load_file(str(path / "ema.safetensors")).items()}}


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, monkeypatch, workers):
    """Weights, EMA, optimizer states and every RNG (global torch, the task's; worker seeds with workers)."""
    def cfg(name):  # the tiny recipe with `workers` DataLoader workers
        return _tiny_cfg(tmp_path, name, **{"data.num_workers": workers})

    full = train_tokenizer(cfg("full"), recon_images=0)
    assert full["steps"] == 4

    real_step = TokenizerTask.step

    def killed(self, batch, step, generator):
        if step == 2:
            raise KeyboardInterrupt("simulated kill after the step-2 checkpoint")
        return real_step(self, batch, step, generator)

    monkeypatch.setattr(TokenizerTask, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(cfg("resumed"), recon_images=0)
    assert Checkpoint(tmp_path / "resumed").step == 2
    monkeypatch.setattr(TokenizerTask, "step", real_step)
    train_tokenizer(cfg("resumed"), resume=True, recon_images=0)

    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys() and any(k.startswith("disc.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = Checkpoint(tmp_path / "full").training_state(), Checkpoint(tmp_path / "resumed").training_state()
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"]), "global RNG differs after resume"
    assert torch.equal(sa["rng"]["task"], sb["rng"]["task"])
    for name, opt in sa["optimizers"].items():
        for pid, st in opt["state"].items():
            for key, value in st.items():
                assert torch.equal(value, sb["optimizers"][name]["state"][pid][key]), (name, pid, key)


class _ToyTask(Task):
    """y = w x with a loss that turns NaN on chosen steps."""

    ema_module = "model"

    def __init__(self, bad_steps: set[int]) -> None:
        self.model = nn.Linear(2, 1)
        self.bad = bad_steps

    def modules(self):
        return {"model": self.model}

    def optimizer_params(self):
        return {"main": list(self.model.named_parameters())}

    def setup(self, info, wrap):
        self.fwd = wrap(self.model)

    def step(self, batch, step, generator):
        loss = self.fwd(batch["x"]).square().mean()
        if step in self.bad:
            loss = loss * float("nan")
        return {"main": loss}, {"loss": loss.detach()}


class _Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return {"x": torch.tensor([float(i), 1.0])}


def _toy_trainer(tmp_path, task, **train):
    cfg = TrainConfig(out_dir=str(tmp_path), global_batch_size=4, progress=False, log_every=1, **train)
    return Trainer(task, cfg, OptimConfig(warmup_epochs=0, lr=0.01), kind="toy", config={})


def test_non_finite_loss_skips_the_update(tmp_path):
    task = _ToyTask(bad_steps={1})
    trainer = _toy_trainer(tmp_path, task, max_steps=3, ckpt_every=1)
    summary = trainer.fit(_Toy())
    assert summary["non_finite_steps"] == 1 and summary["steps"] == 3
    assert all(torch.isfinite(p).all() for p in task.model.parameters())


def test_repeated_non_finite_losses_stop_and_keep_the_last_good_checkpoint(tmp_path):
    task = _ToyTask(bad_steps={2, 3, 4})
    trainer = _toy_trainer(tmp_path, task, max_steps=10, ckpt_every=2, max_bad_steps=3)
    with pytest.raises(NonFiniteLoss, match="3 non-finite steps"):
        trainer.fit(_Toy())
    ck = Checkpoint(tmp_path)
    assert ck.step == 2
    assert all(torch.isfinite(v).all() for v in ck.module_state("model").values())


def test_batch_smaller_than_dataset_is_a_clear_error(tmp_path):
    trainer = _toy_trainer(tmp_path, _ToyTask(set()), max_steps=1)
    trainer.cfg.global_batch_size = 64
    with pytest.raises(ValueError, match="smaller than one global batch"):
        trainer.fit(_Toy())


def test_epochs_and_max_steps(tmp_path):
    summary = _toy_trainer(tmp_path, _ToyTask(set()), epochs=1.5).fit(_Toy())
    assert summary["steps"] == math.ceil(1.5 * 4)


def test_gan_joins_at_its_start_step():
    from detok.losses.tokenizer_loss import TokenizerLoss, TokenizerLossConfig
    from detok.tokenizers import DeTok, detok_config

    torch.manual_seed(0)
    task = TokenizerTask(
        DeTok(detok_config("detok_tiny")), TokenizerLoss(TokenizerLossConfig(perceptual_weight=0.0)), 3
    )
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1}
    g = torch.Generator().manual_seed(0)
    before, _ = task.step(batch, 2, g)
    after, logs = task.step(batch, 3, g)
    assert list(before) == ["ae"] and list(after) == ["ae", "disc"]
    assert "logits_real" in logs and torch.isfinite(after["disc"])


@pytest.mark.slow
def test_decoder_only_fine_tuning_freezes_the_encoder(tmp_path):
    base = train_tokenizer(_tiny_cfg(tmp_path, "base"), recon_images=0)
    ft = _tiny_cfg(tmp_path, "ft", decoder_only="true", init_from=base["run_dir"], **{"tokenizer.gamma": 0.0})
    train_tokenizer(ft, recon_images=0)
    a, b = _weights(tmp_path / "base"), _weights(tmp_path / "ft")
    enc = [k for k in a if k.startswith("ema.model.encoder.")]
    dec = [k for k in a if k.startswith("model.decoder.") and k.endswith("weight")]
    assert enc and all(torch.equal(a[k], b[k]) for k in enc), "the encoder must not move"
    assert any(not torch.equal(a[k], b[k]) for k in dec), "the decoder trains"
