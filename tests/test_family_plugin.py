"""A generator family is one file and one registry line: a toy family defined here, and nowhere else, goes
through `detok train generator`, `detok sample`, `detok evaluate` and one `detok bench tokenizer` cell, with
no other file of detok changed. Everything it needs (its recipe, what its steps mean, its config) it declares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detok import registry
from detok.cli.main import main
from detok.generators.base import Generator
from detok.registry import Family, Sampling

FAMILY = "toygen"


@dataclass
class ToyConfig:
    latent_shape: tuple[int, int, int] = (4, 4, 4)
    num_classes: int = 10
    label_dropout: float = 0.1
    hidden: int = field(default=32, metadata={"help": "width of the one hidden layer"})


class ToyGen(Generator):
    """x = f(noise, class): a one-hidden-layer MLP from noise and a class embedding to a latent; MSE to data."""

    sampling = Sampling(steps="refinements of the one-shot prediction (ignored: always one)", default_steps="1")

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg.latent_shape, cfg.num_classes, cfg.label_dropout)
        self.cfg = cfg
        d = int(np.prod(cfg.latent_shape))
        self.embed = nn.Embedding(cfg.num_classes + 1, cfg.hidden)
        self.inp, self.out = nn.Linear(d, cfg.hidden), nn.Linear(cfg.hidden, d)

    def predict(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(noise.flatten(1)) + self.embed(labels))  # (B, hidden)
        return self.out(h).view(-1, *self.latent_shape)  # (B, C, h, w)

    def loss(self, latents, labels, rng=None):
        noise = torch.randn(latents.shape, generator=rng, device=latents.device)
        return {"loss": (self.predict(noise, self.drop_labels(labels, rng)) - latents).pow(2).mean()}

    def _sample(self, n, labels, *, cfg_scale, steps, head_steps, rng, progress):
        device = self.out.weight.device
        noise = torch.randn((n, *self.latent_shape), generator=rng, device=rng.device if rng else device).to(device)
        labels = torch.full((n,), self.null_label, device=device) if labels is None else labels.to(device)
        cond = self.predict(noise, labels)
        if cfg_scale == 1.0:
            return cond
        uncond = self.predict(noise, torch.full_like(labels, self.null_label))
        return uncond + cfg_scale * (cond - uncond)


RECIPE = {
    "model": "toygen_tiny",
    "train": {"global_batch_size": 8, "max_steps": 4, "log_every": 1, "ckpt_every": 2, "progress": False,
              "ema_decay": 0.5},
    "optim": {"lr": 1e-2},
    "sample": {"cfg_scale": 2.0, "per_class": 1},
}


@pytest.fixture(scope="module")
def toy_family():
    registry.register_family(Family("generator", FAMILY, "a toy generator defined by a test", recipe=RECIPE,
                                    sampling=ToyGen.sampling, config=ToyConfig))

    @registry.register("generator", "toygen_tiny", family=FAMILY)
    def toygen_tiny(latent_shape=(4, 4, 4), num_classes=10, **overrides):
        return ToyGen(ToyConfig(latent_shape=tuple(latent_shape), num_classes=num_classes, **overrides))

    yield FAMILY
    registry.unregister("generator", FAMILY)


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    assert main(["train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(root / "tok"),
                 "data.shapes_size=256"]) == 0  # the domain classifier trains in batches of 128
    return root / "tok"


EVAL = ["feature_net=domain", "domain_steps=20", "n_search=16", "n_final=16", "batch_size=16", "ref_images=64",
        "precision_recall=false", "final_cfg1=false"]


@pytest.mark.slow
def test_a_toy_family_runs_through_every_verb(toy_family, tokenizer_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETOK_CACHE", str(tmp_path / "cache"))
    assert "toygen_tiny" in registry.names("generator")
    # train: the family's own recipe (model, steps, guidance) through the CLI
    run = tmp_path / "gen"
    from detok.runs.config import generator_recipe

    assert generator_recipe(FAMILY)["model"] == "toygen_tiny"
    cache = tmp_path / "latents"
    assert main(["encode", str(tokenizer_run), "--out", str(cache), "--num-workers", "0"]) == 0
    assert main(["train", "generator", "--model", "toygen_tiny", "--tokenizer", str(tokenizer_run),
                 "--cache", str(cache), "--out", str(run), "train.max_steps=3", "train.global_batch_size=8",
                 "train.progress=false", "sample.per_class=1"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "toygen_tiny" and summary["steps"] == 3 and Path(summary["samples"]["grid"]).exists()
    # sample
    assert main(["sample", str(run), "-n", "5", "--batch-size", "4", "--cfg-scale", "1.5", "--out",
                 str(tmp_path / "s")]) == 0
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["arr_0"].shape == (5, 32, 32, 3) and data["arr_1"].tolist() == [0, 1, 2, 3, 4]
    # evaluate: the CFG search and final FID in the domain classifier's features
    assert main(["evaluate", str(run), "cfg_scales=[1.0,2.0]", *EVAL]) == 0
    gen_metrics = json.loads((run / "metrics.json").read_text())["generation"]
    assert np.isfinite(gen_metrics["best"]["fid"]) and gen_metrics["recipe"]["sampler"]["family"] == "ToyGen"
    assert gen_metrics["recipe"]["sampler"]["steps_meaning"] == ToyGen.sampling.steps
    # one bench cell: the family is a column because it is registered, with its recipe's budget overridden
    bench = tmp_path / "bench"
    assert main(["bench", "tokenizer", str(tokenizer_run), "--generators", FAMILY, "--budget", "2",
                 "--out", str(bench), "--cache-images", "32", *[f"--eval={e}" for e in [*EVAL, "cfg_scales=[1.0]"]]]) == 0
    cell = json.loads((bench / "tok" / FAMILY / "cell.json").read_text())
    assert cell["generator"] == FAMILY and cell["model"] == "toygen_tiny" and cell["steps"] == 2
    table = (bench / "table.md").read_text()
    assert FAMILY in table.splitlines()[0]
    capsys.readouterr()


def test_the_toy_family_is_listed_where_families_are(toy_family, capsys):
    fams = [f.name for f in registry.families("generator")]
    assert fams[-1] == FAMILY and registry.family_of("generator", "toygen_tiny").recipe is RECIPE
    with pytest.raises(SystemExit):
        main(["train", "generator", "--help"])
    out = capsys.readouterr().out
    assert "toygen: a toy generator defined by a test" in out and "hidden=32" in out
