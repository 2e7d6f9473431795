"""Bad image files end to end: one-line errors from DataLoader workers, caches of real images only, Pillow formats."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader

from detok.data import (
    BadImageError,
    DataConfig,
    ImageFolderDataset,
    WorkerTraceback,
    build_dataset,
    center_crop_arr,
    collate,
    to_tensor,
)
from detok.registry import build
from detok.tokenizers.latents import LatentCache, latent_stats, write_cache

SIZE = 16  # image side: the tiny tokenizer at 16 px has latents (16, 2, 2)
FILES = [("a", "0.png"), ("a", "1.png"), ("a", "2.png"), ("a", "3.png"), ("b", "4.png"), ("b", "5.png"), ("b", "6.png")]
BAD = (1, 6)  # sorted positions of the corrupt files: 1 is replaced by 2, and 6 (the last) wraps round to 0
GOOD = [i for i in range(len(FILES)) if i not in BAD]
CPU = torch.device("cpu")


def image_folder(root: Path, bad: tuple[int, ...] = BAD) -> Path:
    """root/<class>/<k>.png: distinct solid-ish colours per file; the files at `bad` hold bytes that are no image."""
    for k, (cls, name) in enumerate(FILES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        if k in bad:
            (root / cls / name).write_bytes(b"\x89PNG\r\n\x1a\n these bytes are not an image")
        else:
            arr = np.zeros((20, 24, 3), np.uint8)  # (H, W, 3)
            arr[..., 0], arr[..., 1], arr[:10, :, 2] = 30 * k, 255 - 30 * k, 200
            Image.fromarray(arr).save(root / cls / name)
    return root


def folder_cfg(root: Path, policy: str, workers: int = 0) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=SIZE, bad_images=policy, num_workers=workers)


def tiny_tokenizer():
    torch.manual_seed(0)  # only to make the random init repeatable across processes (the DDP test)
    return build("tokenizer", "detok_tiny", image_size=SIZE).eval()


# ---------------------------------------------------------------- 1. one line from DataLoader workers


@pytest.mark.parametrize("workers", [0, 2])
def test_fail_policy_error_is_one_line_with_workers(tmp_path, workers):
    root = image_folder(tmp_path / "imgs", bad=(3,))
    bad_file = str(root / "a" / "3.png")
    ds = build_dataset(folder_cfg(root, "fail"), "train")
    with pytest.raises(BadImageError) as direct:
        ds[3]
    loader = DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate)
    with pytest.raises(BadImageError) as info:
        list(loader)
    message = str(info.value)
    assert message == str(direct.value) and "\n" not in message  # the same single line as without workers
    assert message.startswith(f"cannot load image {bad_file}: ") and info.value.path == bad_file
    assert isinstance(info.value, RuntimeError)  # what the CLI's error boundary catches
    if workers:
        assert info.value.where.startswith("in DataLoader worker process")
        assert isinstance(info.value.__cause__, WorkerTraceback)  # the worker's traceback, for DETOK_DEBUG=1
        assert "Original Traceback" in str(info.value.__cause__)


def test_all_bad_error_is_one_line_from_a_worker(tmp_path):
    root = image_folder(tmp_path / "imgs", bad=tuple(range(len(FILES))))
    ds = build_dataset(folder_cfg(root, "skip"), "train")
    with pytest.raises(BadImageError) as info:
        list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate))
    first = str(root / "a" / "0.png")  # batches come back in order: the first batch's error is raised
    assert str(info.value) == f"no loadable image in the dataset: all 7 files failed, starting at index 0 ({first})"
    assert info.value.path == first


def test_write_cache_fail_policy_is_one_line_with_workers(tmp_path):
    root = image_folder(tmp_path / "imgs")
    tok = tiny_tokenizer()
    write_cache(tok, build_dataset(folder_cfg(root, "skip"), "train"), tmp_path / "cache", CPU, source={},
                collate=collate, progress=False)
    assert (tmp_path / "cache" / "meta.json").exists()
    ds = build_dataset(folder_cfg(root, "fail"), "train")
    with pytest.raises(BadImageError) as info:
        write_cache(tok, ds, tmp_path / "cache", CPU, source={}, batch_size=2, num_workers=2, collate=collate,
                    progress=False)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"cannot load image {root / 'a' / '1.png'}: ")
    # the old meta would describe shards this run began to overwrite: gone, so no half-written cache loads
    assert not (tmp_path / "cache" / "meta.json").exists()


@pytest.mark.slow
def test_train_cli_fail_policy_prints_one_line_with_workers(tmp_path, capsys):
    """The trainer's loop (plain DataLoader with workers) reports the same one line through the CLI."""
    from detok.cli.main import main

    root = image_folder(tmp_path / "imgs", bad=tuple(range(6)))  # every batch of 4 of the 7 files has a bad one
    code = main(["train", "tokenizer", "--config", "tokenizer_tiny", "--out", str(tmp_path / "run"),
                 "data.name=imagefolder", f"data.root={root}", "data.bad_images=fail", "data.num_workers=2",
                 "train.max_steps=2", "train.global_batch_size=4"])
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("detok train")]
    assert code == 2 and len(err) == 1
    assert re.fullmatch(rf"detok train: error: cannot load image {re.escape(str(root))}/[ab]/[0-5]\.png: .*", err[0])
    assert "Traceback" not in stderr and "worker process" not in stderr  # not the workers' ~30 lines


# ---------------------------------------------------------------- 2. caches and statistics of real images only


@pytest.mark.parametrize("workers", [0, 2])
def test_write_cache_keeps_each_real_image_once(tmp_path, workers):
    root = image_folder(tmp_path / "imgs")
    ds = build_dataset(folder_cfg(root, "skip"), "train")
    assert len(ds) == 7
    tok = tiny_tokenizer()
    meta = write_cache(tok, ds, tmp_path / "cache", CPU, source={"data": "imagefolder"}, batch_size=2,
                       shard_size=3, num_workers=workers, collate=collate, progress=False)
    bad_paths = sorted(str(root / FILES[k][0] / FILES[k][1]) for k in BAD)
    assert meta["count"] == len(GOOD) == 5
    assert meta["skipped"] == bad_paths and meta["skipped_count"] == 2
    cache = LatentCache(tmp_path / "cache")
    assert len(cache) == 5 and cache.skipped == bad_paths
    rows = {cache[i]["index"]: cache[i] for i in range(len(cache))}
    assert sorted(cache.data["index"].tolist()) == GOOD  # each good file exactly once, no substitutes
    good = torch.stack([ds.load(i) for i in GOOD])  # (5, 3, S, S): the real files
    with torch.no_grad():
        expected = tok.encode_moments(good)  # (5, 2C, h, w)
    for k, i in enumerate(GOOD):
        assert rows[i]["label"] == ds.samples[i][1]
        torch.testing.assert_close(rows[i]["moments"], expected[k], rtol=1e-4, atol=1e-5)  # file i's own image


def test_latent_stats_ignore_substituted_duplicates(tmp_path):
    root = image_folder(tmp_path / "imgs")
    ds = build_dataset(folder_cfg(root, "skip"), "train")
    tok = tiny_tokenizer()
    mean, std = latent_stats(tok, ds, CPU, batch_size=3, num_workers=0, collate=collate, progress=False)
    with torch.no_grad():
        z = tok.encode_moments(torch.stack([ds.load(i) for i in GOOD])).double()[:, : tok.latent_channels]
    z = z.transpose(0, 1).reshape(tok.latent_channels, -1)  # (C, N*h*w)
    torch.testing.assert_close(mean, z.mean(1).float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(std, z.std(1, unbiased=False).float(), rtol=1e-4, atol=1e-5)


def _ddp_write_cache(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = build_dataset(folder_cfg(Path(root), "skip"), "train")
        write_cache(tiny_tokenizer(), ds, out, CPU, source={}, batch_size=2, num_workers=0, collate=collate,
                    progress=False)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_write_cache_merges_skipped_files_of_all_ranks(tmp_path):
    """2 gloo ranks read strides 0, 2, 4, 6 and 1, 3, 5: each sees one bad file; meta names both, images once."""
    root = image_folder(tmp_path / "imgs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_write_cache, args=(2, port, str(root), str(tmp_path / "cache")), nprocs=2)
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    parts = [json.loads((tmp_path / "cache" / f"shards-r{r:03d}.json").read_text()) for r in range(2)]
    assert parts[0]["skipped"] == [str(root / "b" / "6.png")] and parts[1]["skipped"] == [str(root / "a" / "1.png")]
    assert meta["skipped"] == [str(root / "a" / "1.png"), str(root / "b" / "6.png")] and meta["skipped_count"] == 2
    assert meta["count"] == 5
    cache = LatentCache(tmp_path / "cache")
    assert sorted(cache.data["index"].tolist()) == GOOD  # no DistributedSampler padding duplicates either


# ---------------------------------------------------------------- 3. every format Pillow opens; ignored files named


def test_folder_lists_pillow_formats_and_warns_about_ignored_files(tmp_path, caplog):
    cls = tmp_path / "imgs" / "c"
    cls.mkdir(parents=True)
    frames = [Image.new("RGB", (24, 20), (255, 0, 0)), Image.new("RGB", (24, 20), (0, 0, 255))]
    frames[0].save(cls / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(cls / "anim.gif").n_frames == 2
    Image.new("RGB", (24, 20), (0, 255, 0)).save(cls / "still.tif")
    expected = ["anim.gif", "still.tif"]
    if features.check("webp"):
        Image.new("RGB", (24, 20), (0, 128, 255)).save(cls / "still.webp", lossless=True)
        expected.append("still.webp")
    (cls / "notes.txt").write_text("not an image")
    (cls / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored without a mention
    with caplog.at_level(logging.WARNING, logger="detok.data.folder"):
        ds = ImageFolderDataset(tmp_path / "imgs", image_size=SIZE, bad_images="fail")
    assert [os.path.basename(p) for p, _ in ds.samples] == expected
    assert ds.ignored == [os.path.join("c", "notes.txt")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ignored 1 file(s)" in warnings[0] and "notes.txt" in warnings[0]
    gif = ds.load(0)  # the first frame, RGB
    assert torch.equal(gif, to_tensor(center_crop_arr(frames[0], SIZE)))
    assert torch.equal(gif[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    item = ds[0]
    assert item["skipped"] == [] and item["image"].shape == (3, SIZE, SIZE)
