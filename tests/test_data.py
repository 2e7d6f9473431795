"""Data package: shapes, ADM crop, bad-image policy (direct and in DataLoader workers), file lists, folders, Fashion-MNIST."""

from __future__ import annotations

import gzip
import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, default_collate

from detok.config import ConfigError, from_dict
from detok.data import (
    BadImageError,
    DataConfig,
    FashionMNISTDataset,
    FileListDataset,
    ImageFileDataset,
    ImageFolderDataset,
    ShapesDataset,
    build_dataset,
    center_crop_arr,
    collate,
    load_image,
    read_file_list,
    read_idx,
    to_pil,
    to_rgb,
    to_tensor,
)
from detok.data import fashion_mnist as fmnist
from detok.data.shapes import COLOURS, COUNT_WORDS, SHAPES

ITEM_KEYS = {"image", "label", "index", "caption", "skipped"}


def check_item(item: dict, size: int) -> None:
    assert set(item) == ITEM_KEYS
    assert item["image"].shape == (3, size, size) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert isinstance(item["label"], int) and isinstance(item["index"], int)
    assert isinstance(item["caption"], str) and isinstance(item["skipped"], list)


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_and_no_global_rng():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    a, b = ShapesDataset(100, 32, seed=3), ShapesDataset(100, 32, seed=3)
    for i in (0, 7, 99):
        assert torch.equal(a[i]["image"], b[i]["image"]) and a[i]["caption"] == b[i]["caption"]
        assert torch.equal(a[i]["image"], a[i]["image"])  # repeated reads agree
    assert not torch.equal(a[0]["image"], a[1]["image"])
    assert not torch.equal(a[0]["image"], ShapesDataset(100, 32, seed=4)[0]["image"])
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(
        torch.get_rng_state(), torch_state
    )


def test_shapes_items_classes_and_splits():
    ds = ShapesDataset(200, 32)
    assert ds.num_classes == 10 and len(ds.class_names) == 10 == len(set(ds.class_names))
    assert sorted({ds[i]["label"] for i in range(20)}) == list(range(10))
    item = ds[5]
    check_item(item, 32)
    assert item["index"] == 5 and item["skipped"] == [] and ds[-1]["index"] == 199
    assert ds[np.int64(5)]["index"] == 5 and type(ds[np.int64(5)]["index"]) is int
    assert item["image"].min() < 0 < item["image"].max()  # uses the range, not a constant
    cfg = DataConfig(name="shapes", image_size=32, shapes_size=50, seed=1)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 50 and len(val) == 5
    assert not torch.equal(train[0]["image"], val[0]["image"])  # a different stream
    with pytest.raises(IndexError):
        ds[200]


@pytest.mark.parametrize("size", [17, 64])
def test_shapes_odd_sizes(size):
    item = ShapesDataset(10, size)[3]
    check_item(item, size)


def test_shapes_caption_matches_image():
    ds = ShapesDataset(120, 64)
    plural = {"cross": "crosses", "ellipse": "ellipses"}
    for i in range(120):
        scene, item = ds.scene(i), ds[i]
        words = item["caption"].split()
        noun = scene.kind if scene.count == 1 else plural.get(scene.kind, scene.kind + "s")
        assert words[:4] == [COUNT_WORDS[scene.count - 1], scene.size, scene.colour, noun]
        assert scene.position in item["caption"] and item["caption"].endswith(
            f"{scene.background} background"
        )
        assert scene.colour != scene.background and item["label"] == SHAPES.index(scene.kind)
        img = ((item["image"].permute(1, 2, 0) + 1) * 127.5).round().numpy()  # (S, S, 3)
        assert np.abs(img[0, 0] - COLOURS[scene.background]).max() <= 1  # corners are background
        if scene.kind in ("circle", "square", "diamond", "hexagon") and scene.size != "small":
            x, y = (round(c * 64 - 0.5) for c in scene.centres[0])
            assert np.abs(img[y, x] - COLOURS[scene.colour]).max() <= 2  # object centre has its colour


def test_shapes_fast():
    ds = ShapesDataset(500, 32)
    start = time.perf_counter()
    for i in range(500):
        ds[i]
    assert time.perf_counter() - start < 5  # about 0.35 s here: 10k images well under a minute


# ---------------------------------------------------------------- ADM crop


def adm_center_crop_reference(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """guided-diffusion's center_crop_arr, numpy slicing as upstream."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y, crop_x = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize(
    "wh,size",
    [((300, 40), 32), ((40, 300), 32), ((5, 5), 32), ((4000, 3000), 64), ((32, 32), 32), ((513, 257), 128)],
)
def test_center_crop_sizes_and_upstream_equality(wh, size):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (wh[1], wh[0], 3), dtype=np.uint8))
    out = center_crop_arr(img, size)
    assert out.size == (size, size)
    assert np.array_equal(np.asarray(out), adm_center_crop_reference(img, size))
    if wh == (size, size):
        assert np.array_equal(np.asarray(out), np.asarray(img))


# ---------------------------------------------------------------- bad and unusual image files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good, convertible and broken image files on disk."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # (H, W, 3)
    f = {
        name: d / name
        for name in ["good.jpg", "trunc.jpg", "random.jpg", "empty.jpg", "grey.png", "cmyk.jpg"]
    }
    f.update({name: d / name for name in ["rgba.png", "palette.png", "grey16.png", "tiny.png", "la.png"]})
    Image.fromarray(arr).save(f["good.jpg"], quality=90)
    data = f["good.jpg"].read_bytes()
    f["trunc.jpg"].write_bytes(data[: len(data) // 2])
    f["random.jpg"].write_bytes(rng.bytes(2000))
    f["empty.jpg"].write_bytes(b"")
    Image.fromarray(arr[..., 0]).save(f["grey.png"])
    Image.fromarray(arr).convert("CMYK").save(f["cmyk.jpg"])
    Image.fromarray(np.dstack([arr, np.zeros((48, 64), np.uint8)])).save(f["rgba.png"])  # fully transparent
    Image.fromarray(np.dstack([arr[..., 0], np.zeros((48, 64), np.uint8)])).save(f["la.png"])
    pal = Image.new("P", (64, 48), 0)
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.paste(1, (0, 0, 32, 48))  # left half index 1 (opaque), right half index 0 (transparent)
    pal.save(f["palette.png"], transparency=0)
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(f["grey16.png"])  # 16-bit
    Image.fromarray(arr[:5, :5]).save(f["tiny.png"])
    f["missing.jpg"] = d / "missing.jpg"
    return f


BROKEN = ["trunc.jpg", "random.jpg", "empty.jpg", "missing.jpg"]
CONVERTIBLE = [
    "good.jpg",
    "grey.png",
    "cmyk.jpg",
    "rgba.png",
    "palette.png",
    "grey16.png",
    "tiny.png",
    "la.png",
]


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_convertible_images_load(files, name):
    ds = ImageFileDataset([(str(files[name]), 0)], ["x"], image_size=24, bad_images="fail")
    item = ds[0]
    check_item(item, 24)
    assert item["skipped"] == []


def test_to_tensor_matches_torchvision(files):
    import torchvision.transforms.functional as TF

    img = load_image(files["good.jpg"])
    expected = TF.normalize(TF.to_tensor(img), [0.5] * 3, [0.5] * 3)
    assert torch.equal(to_tensor(img), expected)
    assert np.array_equal(np.asarray(to_pil(to_tensor(img))), np.asarray(img))


def test_conversions_are_faithful(files):
    grey = np.asarray(load_image(files["grey.png"]))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    grey16 = np.asarray(load_image(files["grey16.png"]))
    assert np.array_equal(grey16[..., 0], np.asarray(Image.open(files["grey.png"])))  # scaled, not clipped
    assert (np.asarray(load_image(files["rgba.png"])) == 255).all()  # transparent -> white
    assert (np.asarray(load_image(files["la.png"])) == 255).all()
    pal = np.asarray(load_image(files["palette.png"]))
    assert (pal[:, :32] == [200, 100, 50]).all() and (pal[:, 32:] == 255).all()
    as_f = to_rgb(Image.fromarray(np.full((4, 4), 0.5, np.float32)))
    assert as_f.mode == "RGB" and np.asarray(as_f).max() == 128
    as_i = to_rgb(Image.fromarray(np.full((4, 4), 65535, np.int32)))
    assert np.asarray(as_i).min() == 255


@pytest.mark.parametrize("name", BROKEN)
def test_fail_policy_names_the_file(files, name):
    ds = ImageFileDataset([(str(files["good.jpg"]), 0), (str(files[name]), 1)], ["a", "b"], 16, "fail")
    with pytest.raises(BadImageError, match=re.escape(str(files[name]))) as info:
        ds[1]
    assert isinstance(info.value, RuntimeError) and info.value.path == str(files[name])
    check_item(ds[0], 16)


def test_truncated_reason_and_load_truncated_flag(files):
    with pytest.raises(BadImageError, match="truncated"):
        load_image(files["trunc.jpg"])
    with pytest.raises(BadImageError, match="empty file"):
        load_image(files["empty.jpg"])
    with pytest.raises(BadImageError, match="not found"):
        load_image(files["missing.jpg"])
    assert load_image(files["trunc.jpg"], load_truncated=True).size == (64, 48)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the process-wide switch is restored


def test_skip_policy_substitutes_next_and_records(files, caplog):
    samples = [(str(files[n]), i) for i, n in enumerate(["trunc.jpg", "random.jpg", "grey.png", "empty.jpg"])]
    ds = ImageFileDataset(samples, ["a", "b", "c", "d"], 16, "skip")
    with caplog.at_level(logging.WARNING):
        item = ds[0]
    assert item["skipped"] == [samples[0][0], samples[1][0]] and item["index"] == 0 and item["label"] == 2
    assert samples[0][0] in caplog.text and samples[1][0] in caplog.text
    assert torch.equal(item["image"], ds[2]["image"]) and ds[2]["skipped"] == []
    wrapped = ds[3]  # wraps around: 3 (empty) -> 0 -> 1 -> 2
    assert wrapped["skipped"] == [samples[3][0], samples[0][0], samples[1][0]] and wrapped["label"] == 2
    assert torch.equal(ds[0]["image"], item["image"]) and ds[0]["skipped"] == item["skipped"]  # deterministic
    all_bad = ImageFileDataset(
        [(str(files["random.jpg"]), 0), (str(files["empty.jpg"]), 0)], ["a"], 16, "skip"
    )
    with pytest.raises(BadImageError, match="all 2 files failed"):
        all_bad[0]


def test_default_collate_breaks_on_skipped_but_collate_works():
    skips = [[], ["a.jpg", "b.jpg"], ["c.jpg"]]
    batch = [
        {"image": torch.zeros(3, 2, 2), "label": 0, "index": i, "caption": "c", "skipped": s}
        for i, s in enumerate(skips)
    ]
    with pytest.raises(RuntimeError):
        default_collate(batch)
    out = collate(batch)
    assert out["skipped"] == [[], ["a.jpg", "b.jpg"], ["c.jpg"]]
    assert (
        out["image"].shape == (3, 3, 2, 2)
        and out["label"].tolist() == [0, 0, 0]
        and out["caption"] == ["c"] * 3
    )


def test_dataloader_workers_skip_and_fail(files):
    names = ["good.jpg", "trunc.jpg", "grey.png", "random.jpg", "cmyk.jpg", "empty.jpg"]
    samples = [(str(files[n]), i) for i, n in enumerate(names)]
    skip = ImageFileDataset(samples, [str(i) for i in range(6)], 16, "skip")
    batches = list(DataLoader(skip, batch_size=3, num_workers=2, collate_fn=collate))
    skipped = [s for b in batches for s in b["skipped"]]
    assert skipped == [[], [samples[1][0]], [], [samples[3][0]], [], [samples[5][0]]]
    assert torch.cat([b["label"] for b in batches]).tolist() == [0, 2, 2, 4, 4, 0]
    fail = ImageFileDataset(samples, [str(i) for i in range(6)], 16, "fail")
    with pytest.raises(BadImageError, match=re.escape(samples[1][0])):
        list(DataLoader(fail, batch_size=3, num_workers=2, collate_fn=collate))


# ---------------------------------------------------------------- file lists and folders


def write_images(root: Path, rels: list[str]) -> None:
    for k, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + k, 12), (10 * k, 50, 100)).save(root / rel)


def test_file_list_parsing(tmp_path):
    write_images(tmp_path, ["a/x.png", "b/with space.png", "c/z.jpg"])
    lst = tmp_path / "train.txt"
    lst.write_text("# comment\n\na/x.png 0\n  b/with space.png 3  \nc/z.jpg 1\n")
    assert read_file_list(lst, tmp_path) == [
        (str(tmp_path / "a/x.png"), 0),
        (str(tmp_path / "b/with space.png"), 3),
        (str(tmp_path / "c/z.jpg"), 1),
    ]
    ds = FileListDataset(tmp_path, lst, image_size=8)
    assert len(ds) == 3 and ds.num_classes == 4 and ds[1]["label"] == 3
    check_item(ds[1], 8)
    for bad, why in [("a/x.png 0\nb/y.png\n", "expected"), ("a/x.png 0\n\nb/y.png one\n", "not an integer")]:
        lst.write_text(bad)
        with pytest.raises(ValueError, match=f"{re.escape(str(lst))}:(2|3): .*{why}"):
            read_file_list(lst, tmp_path)
    lst.write_text("a/x.png -1\n")
    with pytest.raises(ValueError, match="negative"):
        read_file_list(lst)


def test_build_filelist_val_shares_classes(tmp_path):
    write_images(tmp_path, ["t/0.png", "t/1.png", "v/0.png"])
    (tmp_path / "train.txt").write_text("t/0.png 0\nt/1.png 1\n")
    (tmp_path / "val.txt").write_text("v/0.png 4\n")
    cfg = DataConfig(name="filelist", root=str(tmp_path), file_list=str(tmp_path / "train.txt"), image_size=8)
    assert len(build_dataset(cfg, "val")) == 2  # no val list: the train list, with a warning
    cfg.val_file_list = str(tmp_path / "val.txt")
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 2 and len(val) == 1 and train.num_classes == val.num_classes == 5
    with pytest.raises(ValueError, match="file_list"):
        build_dataset(DataConfig(name="filelist"))


def test_imagefolder_labels_and_splits(tmp_path):
    write_images(tmp_path / "flat", ["zebra/1.png", "apple_pie/2.jpg", "apple_pie/3.png"])
    (tmp_path / "flat" / "mango").mkdir()
    (tmp_path / "flat" / "mango" / "notes.txt").write_text("not an image")  # an empty class is fine
    ds = ImageFolderDataset(tmp_path / "flat", image_size=8)
    assert ds.class_names == ["apple_pie", "mango", "zebra"] and ds.num_classes == 3
    assert [label for _, label in ds.samples] == [0, 0, 2]
    assert ds[0]["caption"] == "an image of an apple pie" and ds[2]["caption"] == "an image of a zebra"
    check_item(ds[2], 8)
    write_images(tmp_path / "in", ["train/b/1.png", "train/a/2.png", "train/c/3.png", "val/c/4.png"])
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "in"), image_size=8)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(train) == 3 and len(val) == 1 and val.class_names == ["a", "b", "c"] and val[0]["label"] == 2
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "flat" / "mango")


# ---------------------------------------------------------------- Fashion-MNIST


def write_idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.array(arr.shape, dtype=">i4").tobytes()
    payload = header + arr.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_fashion(folder: Path, n: int, compress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    images, labels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


@pytest.mark.parametrize("layout,compress", [("direct", True), ("torchvision", False)])
def test_fashion_mnist_fake_idx(tmp_path, layout, compress):
    folder = tmp_path if layout == "direct" else tmp_path / "FashionMNIST" / "raw"
    images, labels = fake_fashion(folder, 12, compress)
    assert np.array_equal(read_idx(next(folder.glob("train-images*"))), images)
    cfg = DataConfig(name="fashion-mnist", root=str(tmp_path), image_size=28)
    ds = build_dataset(cfg, "val")
    assert len(ds) == 12 and ds.num_classes == 10 and ds.labels_path.name.startswith("t10k")
    item = ds[3]
    check_item(item, 28)
    assert item["label"] == 3 and item["caption"] == "a photo of a dress"
    expected = torch.from_numpy(images[3]).float() / 127.5 - 1  # (28, 28)
    assert torch.allclose(item["image"], expected.expand(3, 28, 28), atol=1e-6)  # grey replicated to RGB
    check_item(FashionMNISTDataset(tmp_path, "train", image_size=33)[0], 33)


def test_fashion_mnist_missing_message(tmp_path, monkeypatch):
    monkeypatch.setattr(fmnist, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataset(tmp_path / "empty", "train")
    msg = str(info.value)
    expected = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "apt-get install dataset-fashion-mnist"]
    expected += [
        str(tmp_path / "empty"),
        str(tmp_path / "empty" / "FashionMNIST" / "raw"),
        str(tmp_path / "no-debian"),
    ]
    for part in expected:
        assert part in msg, part
    (tmp_path / "bad-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(tmp_path / "bad-images-idx3-ubyte")


@pytest.mark.skipif(
    not Path(fmnist.DEBIAN_DIR).is_dir(), reason="`apt-get install dataset-fashion-mnist` not done"
)
def test_fashion_mnist_debian_files():
    train = build_dataset(DataConfig(name="fashion-mnist", image_size=32), "train")
    val = build_dataset(DataConfig(name="fashion-mnist", image_size=32), "val")
    assert len(train) == 60000 and len(val) == 10000
    assert np.bincount(val.labels).tolist() == [1000] * 10
    check_item(train[0], 32)


# ---------------------------------------------------------------- config


def test_data_config_from_dict():
    cfg = from_dict(DataConfig, {"name": "fashion-mnist", "bad_images": "fail", "image_size": 32})
    assert cfg.name == "fashion-mnist" and cfg.image_size == 32 and cfg.hflip is True
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"name": "cifar"})
    with pytest.raises(ConfigError):
        from_dict(DataConfig, {"bad_images": "ignore"})
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset(DataConfig(name="cifar"))  # type: ignore[arg-type]


class _MomentsTokenizer(torch.nn.Module):
    """encode_moments = fixed per-image means (from the image) and a fixed per-channel log-variance."""

    latent_channels = 2

    def __init__(self, logvar: tuple[float, float]) -> None:
        super().__init__()
        self.logvar = torch.tensor(logvar)

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        mean = images[:, :2, :2, :2] * torch.tensor([3.0, 0.1])[:, None, None]  # (B, 2, 2, 2)
        logvar = self.logvar[None, :, None, None].expand_as(mean)
        return torch.cat([mean, logvar], 1)  # (B, 4, 2, 2)


def test_latent_stats_of_means_and_of_samples():
    from detok.tokenizers.latents import latent_stats

    g = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 4, 4, generator=g)
    data = [{"image": x, "label": 0} for x in images]
    tok = _MomentsTokenizer((math.log(0.25), math.log(4.0)))
    collate = lambda items: {"image": torch.stack([i["image"] for i in items])}  # noqa: E731
    mean, std = latent_stats(tok, data, torch.device("cpu"), batch_size=16, collate=collate, progress=False)
    means = tok.encode_moments(images)[:, :2].transpose(0, 1).reshape(2, -1).double()  # (C, B*h*w)
    torch.testing.assert_close(mean, means.mean(1).float())
    torch.testing.assert_close(std, means.std(1, unbiased=False).float())
    mean_s, std_s = latent_stats(tok, data, torch.device("cpu"), batch_size=16, collate=collate, progress=False,
                                 of="sample")
    torch.testing.assert_close(mean_s, mean)
    # posterior variance added per channel: a noisy low-signal channel (the second) is not scaled to std >> 1
    torch.testing.assert_close(std_s, (std.double().pow(2) + torch.tensor([0.25, 4.0], dtype=torch.float64)).sqrt().float())
    with pytest.raises(ValueError, match="'mean' \\(upstream\\) or 'sample'"):
        latent_stats(tok, data, torch.device("cpu"), collate=collate, progress=False, of="moments")
    from detok.runs.config import TokenizerRunConfig

    with pytest.raises(ConfigError, match="stats_of: 'moments' is not one of"):  # a run config fails before training
        from_dict(TokenizerRunConfig, {"stats_of": "moments"})
