"""`detok fid`: any image set against images or statistics; parity with torchmetrics on real Inception weights."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detok.cli.main import main
from detok.eval import inception as inc
from detok.runs.fid import read_image_set


def _save_folder(images: torch.Tensor, root) -> None:
    root.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(root / f"{i:03d}.png")


def test_image_sets_read_from_npz_and_folders_alike(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 12, 12), generator=g, dtype=torch.uint8)
    np.savez(tmp_path / "s.npz", arr_0=images.permute(0, 2, 3, 1).numpy())
    _save_folder(images, tmp_path / "dir" / "nested")
    assert torch.equal(read_image_set(tmp_path / "s.npz"), images)
    assert torch.equal(read_image_set(tmp_path / "dir"), images)  # recursive, sorted by name


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    _save_folder(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), tmp_path / "mixed")
    Image.new("RGB", (9, 9)).save(tmp_path / "mixed" / "zz.png")
    np.savez(tmp_path / "floats.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    (tmp_path / "empty").mkdir()
    for inputs, needle in ((["mixed", "mixed"], "must share a size"), (["floats.npz", "mixed"], "expected uint8"),
                           (["empty", "mixed"], "no images"), (["missing", "mixed"], "neither an .npz")):
        assert main(["fid", *(str(tmp_path / p) for p in inputs), "--feature-net", "domain", "--data",
                     "shapes"]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1 and needle in err[0], err


@pytest.mark.slow
def test_fid_command_agrees_with_torchmetrics_with_the_same_inception_weights(tmp_path):
    """Real Fashion-MNIST images through the real offline Inception: `detok fid` of an image folder against an
    .npz equals torchmetrics' FID with the same TorchScript weights (within 1 %), and against the .npz's own
    statistics file it gives the same number; IS is reported only when the weights have the classifier."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from test_eval_metrics import (
        FID_CHECK_IMAGES,
        TorchScriptInception,
        _fashion_mnist_uint8,
        _fid_helper_weights,
    )

    path = _fid_helper_weights()

    real = _fashion_mnist_uint8("train", FID_CHECK_IMAGES)
    fake = _fashion_mnist_uint8("val", FID_CHECK_IMAGES).flip(-1)
    _save_folder(fake, tmp_path / "fake")
    np.savez(tmp_path / "real.npz", arr_0=real.permute(0, 2, 3, 1).numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16 samples in 2048 dims: rank deficient, on purpose (speed)
        assert main(["fid", str(tmp_path / "fake"), str(tmp_path / "real.npz"), "--out", str(tmp_path / "a.json")]) == 0
        tm = FrechetInceptionDistance(feature=TorchScriptInception(path))
        tm.update(real, real=True)
        tm.update(fake, real=False)
        expected = float(tm.compute())
    res = json.loads((tmp_path / "a.json").read_text())
    assert res["fid"] == pytest.approx(expected, rel=0.01)
    assert res["recipe"]["samples_n"] == FID_CHECK_IMAGES and res["recipe"]["reference_n"] == FID_CHECK_IMAGES
    assert {"sfid", "precision", "recall"} <= set(res) and "classifier_score" not in res
    feats = inc.load_inception(path)(real)["pool"].double().numpy()
    np.savez(tmp_path / "stats.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["fid", str(tmp_path / "fake"), str(tmp_path / "stats.npz"), "--out", str(tmp_path / "b.json")]) == 0
    stats_only = json.loads((tmp_path / "b.json").read_text())
    assert stats_only["fid"] == pytest.approx(res["fid"], rel=1e-4) and "precision" not in stats_only
