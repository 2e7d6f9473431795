"""The `detok` command line end to end: help, config errors, train / reconstruct / encode / convert, bad images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from detok.cli.main import main
from detok.data import DataConfig, build_dataset
from detok.io import Checkpoint
from detok.tokenizers.latents import CacheMismatch, LatentCache
from detok.tokenizers.load import load_tokenizer

TINY = ["train", "tokenizer", "--config", "tokenizer_tiny"]


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("quickstart", "train", "encode", "reconstruct", "convert"):
        assert verb in out


def test_train_help_shows_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "tokenizer", "--help"])
    out = capsys.readouterr().out
    for line in ("tokenizer.gamma = 3.0", "tokenizer.mask_ratio = 0.7", "loss.kl_weight = 1e-06",
                 "train.global_batch_size = 1024", "disc_start_epoch = 100.0"):
        assert line in out


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path), "tokenizer.gama=3"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.gama" in err and "gamma" in err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "tok"
    assert main([*TINY, "--out", str(run)]) == 0
    return run


def test_train_writes_a_self_describing_run(tiny_run):
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "reconstructions.png", "train_summary.json"):
        assert (tiny_run / name).exists(), name
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["global_batch_size"] == 8 and summary["per_process_batch_size"] == 8
    assert 0 < summary["reconstruction"]["psnr"] < 100 and -1 <= summary["reconstruction"]["ssim"] <= 1
    tok = load_tokenizer(tiny_run)  # needs no CLI args: the checkpoint carries its config
    assert tok.latent_shape == (16, 4, 4)
    assert not torch.equal(tok.latent_std, torch.ones(16)), "latent statistics are computed and saved"
    lines = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("psnr" in x for x in lines)


def test_reconstruct_and_encode(tiny_run, tmp_path):
    assert main(["reconstruct", str(tiny_run), "-n", "6", "--out", str(tmp_path / "rec")]) == 0
    rec = json.loads((tmp_path / "rec" / "reconstruct.json").read_text())
    assert rec["n"] == 6 and rec["weights"] == "ema" and Path(rec["grid"]).exists()
    # the bicubic baseline at the latent's size (tiny: 16 x 4 x 4 = 256 numbers -> 9 x 9 x 3 = 243)
    assert rec["bicubic"]["latent_values"] == 256 and rec["bicubic"]["side"] == 9 and rec["bicubic"]["n"] == 6
    assert Image.open(rec["grid"]).size[1] == 3 * 33 + 1  # originals, reconstructions, bicubic rows

    cache = tmp_path / "cache"
    assert main(["encode", str(tiny_run), "--out", str(cache), "--num-workers", "0", "--shard-size", "40", "--batch-size", "16"]) == 0
    ds = LatentCache(cache)
    assert len(ds) == 64 and len(ds.meta["shards"]) == 2
    tok = load_tokenizer(tiny_run)
    ds.check(tok)
    item = ds[5]
    source = build_dataset(DataConfig(name="shapes", image_size=32, shapes_size=64))
    x = source[item["index"]]["image"][None]  # (1, 3, 32, 32)
    torch.testing.assert_close(item["moments"], tok.encode_moments(x)[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(item["moments_flip"], tok.encode_moments(x.flip(-1))[0], rtol=1e-4, atol=1e-5)

    other = load_tokenizer(tiny_run, use_ema=False)  # raw weights: another latent space
    with pytest.raises(CacheMismatch, match="detok encode"):
        ds.check(other)
    tok.set_stats(tok.latent_mean + 1, tok.latent_std)
    with pytest.raises(CacheMismatch, match="statistics"):
        ds.check(tok)


def test_convert_upstream_checkpoint(upstream_fixture, tmp_path):
    fx = upstream_fixture["detok_tiny"]
    src = tmp_path / "upstream.pth"
    torch.save(fx["checkpoint"], src)
    (tmp_path / "stats.json").write_text(json.dumps({"mean": list(range(32)), "std": [2.0] * 32}))
    out = tmp_path / "converted"
    assert main(["convert", str(src), str(out), "--stats", str(tmp_path / "stats.json"), "--heads", "2"]) == 0
    tok = load_tokenizer(out)
    assert tok.cfg.rope_layout == "upstream" and Checkpoint(out).kind == "tokenizer"
    torch.testing.assert_close(tok.latent_mean, torch.arange(16.0))  # the first 16 channels: posterior means
    with torch.no_grad():
        torch.testing.assert_close(tok.decode(tok.encode(fx["input"])), fx["decoded"], rtol=0, atol=1e-5)


def _image_folder(root: Path, bad: bool) -> Path:
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            arr = (torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(root / c / f"{i}.png")
    if bad:
        (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.mark.slow
def test_bad_image_policy_through_the_cli(tmp_path, capsys):
    data = _image_folder(tmp_path / "imgs", bad=True)
    common = [*TINY, "data.name=imagefolder", f"data.root={data}", "train.max_steps=2"]
    assert main([*common, "--out", str(tmp_path / "skip"), "data.bad_images=skip"]) == 0
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert any("broken.png" in p for p in summary["skipped_images"])
    assert main([*common, "--out", str(tmp_path / "fail"), "data.bad_images=fail"]) == 2
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_writes_summary(tmp_path, monkeypatch):
    from detok.eval import protocol
    from test_eval_protocol import FakeNet  # tests/ is on sys.path under pytest

    monkeypatch.setenv("DETOK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(protocol, "feature_net_for", lambda *a, **k: FakeNet(classes=10))  # no domain training
    # a small data set: 640 train / 64 val images (the preset's 20000 would dominate the run's time)
    assert main(["quickstart", "--out", str(tmp_path), "--steps", "3", "--generators", "sit", "--decoder-ft-steps",
                 "2", "--generator-steps", "2", "--eval-samples", "32", "--cache-images", "128", "stats_images=64",
                 "data.shapes_size=640"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    tok = summary["tokenizer"]
    assert {"psnr", "ssim", "seconds", "stage1_psnr"} <= set(tok) and tok["steps"] == 3
    # stage 2 fine-tuned the decoder only: same encoder, so the generators' latent space is stage 1's
    assert tok["decoder_ft_steps"] == 2 and tok["run_dir"].endswith("tokenizer_decoder_ft")
    stage1 = load_tokenizer(tmp_path / "tokenizer")
    stage2 = load_tokenizer(tmp_path / "tokenizer_decoder_ft")
    for name, p in stage1.encoder.state_dict().items():
        assert torch.equal(p, stage2.encoder.state_dict()[name]), name
    assert any(not torch.equal(p, stage2.decoder.state_dict()[n]) for n, p in stage1.decoder.state_dict().items())
    assert tok["bicubic"]["latent_values"] == math.prod(tok["latent_shape"]) and tok["bicubic"]["psnr"] > 0
    assert Path(tok["reconstructions"]).exists()
    acc = tok["class_accuracy"]  # the same (fake) net as the FID: real / reconstruction / bicubic top-1
    assert acc["n"] == 64 and acc["classifier"] == "fake-projection"  # min(1000, the val split)
    assert all(0.0 <= acc[k] <= 1.0 for k in ("real", "reconstruction", "bicubic"))
    sit = summary["generators"]["sit"]
    assert sit["steps"] == 2 and sit["fid_samples"] == 32 and sit["fid"] >= 0  # exactly --eval-samples
    assert sit["fid_features"] == "fake-projection" and Path(sit["samples"]).exists()
    ref = summary["reference_points"]  # beside the FIDs: real val images at the same n, and chance level
    assert ref["real_n"] == 32 and ref["real_fid"] >= 0 and ref["chance_class_accuracy"] == 0.1
    assert 0.0 <= ref["real_class_accuracy"] <= 1.0 and "reference_points" not in sit  # once, not per generator


def test_convert_upstream_mar_then_load(upstream_fixture, tmp_path):
    from detok.generators.load import load_generator

    fx = upstream_fixture["mar_tiny"]
    src = tmp_path / "mar.pth"
    torch.save(fx["checkpoint"], src)
    assert main(["convert", str(src), str(tmp_path / "mar"), "--heads", "2"]) == 0
    gen, cfg = load_generator(tmp_path / "mar")
    assert cfg["latent_shape"] == [16, 4, 4] and cfg["num_classes"] == 10
    with torch.no_grad():
        out = gen(fx["tokens"], fx["mask"], fx["labels"])
    torch.testing.assert_close(out, fx["decoder_output"], rtol=0, atol=1e-5)


def test_encode_folder_with_unreadable_files_caches_real_images_only(tiny_run, tmp_path, capsys):
    """`detok encode --data imagefolder` over 6 good + 2 corrupt files: 6 cached, the 2 named; --bad-images fail
    stops with one line naming a file."""
    from PIL import Image

    root = tmp_path / "imgs" / "train"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (60 * i, 100, 200 if c == "a" else 20)).save(root / c / f"{i}.png")
        (root / c / "broken.png").write_bytes(b"not a png at all")
    cache = tmp_path / "cache"
    assert main(["encode", str(tiny_run), "--out", str(cache), "--data", "imagefolder", "--root",
                 str(tmp_path / "imgs"), "--num-workers", "0", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    ds = LatentCache(cache)
    assert len(ds) == 6 and ds.meta["count"] == 6 and ds.meta["skipped_count"] == 2
    assert sorted(Path(p).parent.name + "/" + Path(p).name for p in ds.meta["skipped"]) == ["a/broken.png",
                                                                                              "b/broken.png"]
    assert sorted(int(ds[i]["index"]) for i in range(6)) == [0, 1, 2, 4, 5, 6]  # each real image once
    assert "skipped_count: 2" in out and "broken.png" in out
    assert main(["encode", str(tiny_run), "--out", str(tmp_path / "c2"), "--data", "imagefolder", "--root",
                 str(tmp_path / "imgs"), "--num-workers", "0", "--bad-images", "fail"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "broken.png" in err[0]


def test_cli_prints_a_warning_as_one_line():
    """`detok` commands show Python warnings (e.g. the latent-inflation warning) as one readable line: no file
    path and no source line."""
    import warnings

    from detok.cli.common import setup_logging

    before = warnings.formatwarning
    try:
        setup_logging()
        text = warnings.formatwarning(RuntimeWarning("step 150: latents too large"), RuntimeWarning, "x.py", 7, "code")
    finally:
        warnings.formatwarning = before
    assert text == "[detok] RuntimeWarning: step 150: latents too large\n"
