"""Evaluation protocol: CFG search + final metrics, tokenizer metrics, `detok evaluate` / `bench` / probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from detok.cli.main import main
from detok.eval import protocol
from detok.eval.protocol import EvalConfig, score_generator
from detok.eval.refstats import Reference
from detok.generators.load import build_generator
from detok.tokenizers.latents import LatentCache

LATENT = (4, 4, 4)


class FakeNet:
    """A fixed random projection of 8x8-pooled pixels: a cheap, deterministic FeatureNet with logits."""

    name, weights_sha256, dim, resize = "fake-projection", "0" * 16, 16, "adaptive avg pool 8"

    def __init__(self, classes: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.proj = torch.randn(3 * 64, self.dim, generator=g)
        self.head = torch.randn(self.dim, classes, generator=g)

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1)  # (B, 192)
        pool = x @ self.proj
        return {"pool": pool, "logits": pool @ self.head}


class IdentityTokenizer(torch.nn.Module):
    """Decodes (B, 4, 4, 4) latents to 3 x 16 x 16 images by nearest upsampling of 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def denormalize(self, z):
        return z

    def decode(self, z):
        return torch.nn.functional.interpolate(z[:, :3].tanh(), scale_factor=4)


def reference(net: FakeNet, n: int = 300) -> Reference:
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(n, 3, 16, 16, generator=g) * 255).to(torch.uint8)
    return Reference.from_features(net(images)["pool"].numpy(), feature_net=net.name)


def test_search_then_final_reuses_search_samples():
    torch.manual_seed(0)
    gen = build_generator("sit_tiny", LATENT, 4, {"sample_steps": 4, "sampler": "euler"}).eval()
    tok, net = IdentityTokenizer(), FakeNet()
    ref = reference(net)
    cfg = EvalConfig(cfg_scales=[1.0, 2.0], n_search=40, n_final=96, batch_size=32, precision_recall=True)
    res = score_generator(gen, tok, net, ref, cfg, progress=False)
    assert [r["n"] for r in res["search"]] == [40, 40]  # exactly n_search, though not whole batches of 32
    assert res["best"]["n"] == 96 and res["cfg1"]["n"] == 96
    assert {"precision", "recall", "class_accuracy", "classifier_score"} <= set(res["best"])
    assert "inception_score" not in res["best"]  # the IS formula on a non-Inception classifier is named for it
    assert res["best"]["cfg"] == min(res["search"], key=lambda r: r["fid"])["cfg"]
    # the final at the best scale equals scoring its 96 samples from scratch (same seeds by index)
    fresh = EvalConfig(cfg_scales=[res["best"]["cfg"]], n_search=96, n_final=96, batch_size=32,
                       final_cfg1=False, precision_recall=True)
    again = score_generator(gen, tok, net, ref, fresh, progress=False)["best"]
    assert again["fid"] == pytest.approx(res["best"]["fid"], rel=1e-9)
    assert again["precision"] == res["best"]["precision"] and again["recall"] == res["best"]["recall"]
    kept: list = []  # the kept images are the best scale's n_final samples, each index once, search included
    score_generator(gen, tok, net, ref, cfg, progress=False, images_out=kept)
    assert sorted(i for start, u8, _ in kept for i in range(start, start + len(u8))) == list(range(96))


def test_sample_counts_are_used_exactly_or_refused():
    gen = build_generator("sit_tiny", LATENT, 4, {"sample_steps": 2, "sampler": "euler"}).eval()
    tok, net = IdentityTokenizer(), FakeNet()
    ref = reference(net)
    res = score_generator(gen, tok, net, ref, EvalConfig(cfg_scales=[1.0], n_search=12, n_final=13, batch_size=5,
                                                         final_cfg1=False, precision_recall=False), progress=False)
    assert res["search"][0]["n"] == 12 and res["best"]["n"] == 13  # not whole batches of 5: as asked
    with pytest.raises(ValueError, match="n_search <= n_final"):
        score_generator(gen, tok, net, ref, EvalConfig(cfg_scales=[1.0], n_search=64, n_final=32), progress=False)


def test_cfg_scales_must_not_be_empty():
    gen = build_generator("sit_tiny", LATENT, 4).eval()
    with pytest.raises(ValueError, match="cfg_scales"):
        score_generator(gen, IdentityTokenizer(), FakeNet(), None, EvalConfig(cfg_scales=[]), progress=False)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assert main(["train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(root / "tok"),
                 "data.shapes_size=256"]) == 0
    assert main(["encode", str(root / "tok"), "--out", str(root / "cache"), "--num-workers", "0"]) == 0
    assert main(["train", "generator", "--model", "sit_tiny", "--tokenizer", str(root / "tok"), "--cache",
                 str(root / "cache"), "--out", str(root / "sit"), "train.max_steps=2", "train.global_batch_size=8",
                 "train.progress=false", "sample.per_class=1", "generator.sample_steps=4",
                 "generator.sampler=euler"]) == 0
    return root


@pytest.fixture
def fake_features(monkeypatch, tmp_path):
    monkeypatch.setenv("DETOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(protocol, "feature_net_for", lambda *a, **k: FakeNet(classes=10))


@pytest.mark.slow
def test_evaluate_generator_and_tokenizer_write_metrics_with_recipes(tiny_runs, fake_features, capsys):
    sit, tok = tiny_runs / "sit", tiny_runs / "tok"
    assert main(["evaluate", str(sit), "n_search=32", "n_final=64", "batch_size=32", "cfg_scales=[1.0,2.0]",
                 "ref_images=128"]) == 0
    gen = json.loads((sit / "metrics.json").read_text())["generation"]
    recipe = gen["recipe"]
    assert gen["best"]["n"] == 64 and len(gen["search"]) == 2
    for key in ("feature_net", "weights_sha256", "reference", "n_search", "n_final", "sampler", "weights", "seed"):
        assert key in recipe, key
    assert recipe["feature_net"] == "fake-projection" and recipe["weights"] == "ema"
    assert recipe["sampler"]["sampler"] == "euler" and recipe["reference"]["n"] == 128
    floor = gen["reference_points"]  # n_final real val images against the same reference: the floor at this n
    assert floor["real_n"] == 25 and floor["real_fid"] >= 0 and floor["chance_class_accuracy"] == 0.1
    assert "reference_points" in capsys.readouterr().out
    assert main(["evaluate", str(tok), "recon_images=16", "batch_size=8"]) == 0
    metrics = json.loads((tok / "metrics.json").read_text())
    rec = metrics["reconstruction"]
    assert rec["n"] == 16 and np.isfinite(rec["rfid"]) and rec["rfid"] >= 0 and 0 < rec["ssim"] <= 1
    assert rec["recipe"]["encode"].startswith("posterior mean")
    assert "generation" not in metrics  # the tokenizer's own file


@pytest.mark.slow
def test_bench_table_skips_finished_cells(tiny_runs, fake_features, tmp_path, capsys):
    args = ["bench", "tokenizer", str(tiny_runs / "tok"), "--generators", "sit", "--budget", "2",
            "--batch-size", "8", "--set", "sample.per_class=0", "--set", "train.progress=false",
            "--set", "generator.sample_steps=4", "--set", "generator.sampler=euler",
            "--eval", "n_search=32", "--eval", "n_final=32", "--eval", "batch_size=32",
            "--eval", "cfg_scales=[1.0]", "--eval", "ref_images=128", "--out", str(tmp_path / "bench"),
            "--cache-images", "40"]
    assert main(args) == 0
    assert len(LatentCache(tmp_path / "bench" / "tok" / "latents")) == 40  # the first 40 of 256 train images
    table = json.loads((tmp_path / "bench" / "table.json").read_text())
    assert len(table["rows"]) == 1 and table["rows"][0]["generator"] == "sit"
    assert "| tok |" in (tmp_path / "bench" / "table.md").read_text()
    assert (tmp_path / "bench" / "table.png").stat().st_size > 0
    cell = Path(table["rows"][0]["cell"]) / "cell.json"
    found = json.loads(cell.read_text())
    assert [r["cfg"] for r in found["search"]] == [1.0] and found["eval_seconds"] > 0
    before = cell.stat().st_mtime_ns
    assert main(args) == 0  # finished cell: skipped, not retrained
    assert cell.stat().st_mtime_ns == before


@pytest.mark.parametrize("verb", [["bench", "tokenizer", "no/such/run"], ["quickstart"]])
def test_unknown_generator_family_is_refused_while_parsing(verb, capsys, tmp_path):
    """A misspelt family stops at argument parsing (argparse's exit 2), before any tokenizer loads or trains."""
    with pytest.raises(SystemExit) as e:
        main([*verb, "--generators", "sit,sti", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown generator family sti" in err and "rasterar" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_generation_probe_logs_fid_and_leaves_tokenizer_training_unchanged(fake_features, tmp_path):
    from safetensors.torch import load_file

    common = ["train", "tokenizer", "--config", "tokenizer_tiny", "train.ckpt_every=100", "disc_start_epoch=100"]
    probe = ["probe.every_epochs=0.25", "probe.steps=2", "probe.n_samples=32", "probe.images=32"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "probed"), *probe]) == 0
    records = [json.loads(line) for line in (tmp_path / "probed" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if "probe_fid" in r]
    assert [r["step"] for r in probes] == [2, 4]  # 8 steps per epoch: every 2 steps
    assert all(np.isfinite(r["probe_fid"]) and 0 <= r["probe_class_accuracy"] <= 1 for r in probes)
    assert not (tmp_path / "probed" / "probe").exists() or not any((tmp_path / "probed" / "probe").iterdir())

    def weights(run):
        ckpt = sorted((run / "checkpoints").glob("step-*"))[-1]
        ema = {"ema." + k: v for k, v in load_file(str(ckpt / "ema.safetensors")).items()}
        return {**load_file(str(ckpt / "weights.safetensors")), **ema}

    plain, probed = weights(tmp_path / "plain"), weights(tmp_path / "probed")
    assert plain.keys() == probed.keys()
    for k in plain:  # the probe neither consumed the run's randomness nor touched its modules
        assert torch.equal(plain[k], probed[k]), k


def test_real_reference_points_score_real_images_as_samples_are(tmp_path):
    """The floor is the real val images through the same metrics: FID against the reference, the classifier's
    accuracy on them; computed directly here from the same images."""
    from detok.data import build_dataset, collate
    from detok.data.build import DataConfig
    from detok.eval.frechet import frechet_distance
    from detok.eval.recon import to_uint8

    net, data = FakeNet(classes=10), DataConfig(name="shapes", image_size=16, num_workers=0)
    ref = reference(net)
    out = protocol.real_reference_points(net, ref, data, 40, batch_size=16, progress=False)
    batch = collate([build_dataset(data, "val")[i] for i in range(40)])
    feats = net(to_uint8(batch["image"]))
    pool = feats["pool"].double().numpy()
    want = frechet_distance(pool.mean(0), np.cov(pool, rowvar=False), ref.mu, ref.sigma)
    assert out["real_n"] == 40 and out["real_fid"] == pytest.approx(float(want), rel=1e-4)
    acc = float((feats["logits"].argmax(1) == batch["label"]).double().mean())
    assert out["real_class_accuracy"] == pytest.approx(acc) and out["chance_class_accuracy"] == 0.1
    assert "real_classifier_score" in out and "real_inception_score" not in out  # named for the net


@pytest.mark.parametrize("value", ["auto", "always", "never"])
def test_real_floor_values_survive_the_command_line(value):
    """Every choice parses from `key=value` (YAML would read on / off / yes / no as booleans)."""
    from detok.config import resolve

    assert resolve(EvalConfig, [], [f"real_floor={value}"]).real_floor == value


def test_train_compile_values_survive_the_command_line():
    from detok.config import resolve
    from detok.engine.trainer import TrainConfig

    for value in ("none", "blocks"):
        assert resolve(TrainConfig, [], [f"compile={value}"]).compile == value
