"""`detok fid`: score any set of images (an ADM-layout .npz or an image folder) against another set or
reference statistics, the way torch-fidelity's `fidelity --input1 --input2` and ADM's `evaluator.py` are used.

    score_sets("samples.npz", "VIRTUAL_imagenet256_labeled.npz")           # FID, sFID, IS, precision / recall
    score_sets("samples/", "real/", feature_net="domain", data="shapes")   # a small data set's classifier

The second input may be a statistics file (`mu` / `sigma`, torch-fidelity or MAR), an ADM reference batch
(`arr_0` images, with or without statistics), a samples .npz or a folder of images. sFID needs spatial
statistics (an ADM batch or images), precision / recall needs reference images or features, IS needs a net
with a classifier (named `classifier_score` when the net is not Inception). Each score is written beside its
recipe (feature net and weights, n on both sides, reference file and hash).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_image_set(path: str | Path) -> torch.Tensor:
    """uint8 images (N, 3, H, W) from a .npz (`arr_0`, uint8 N x H x W x 3) or a folder (recursive, sorted)."""
    from PIL import Image

    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{path}: no images under 'arr_0' (keys {sorted(data.files)})")
            arr = data["arr_0"]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{path}: 'arr_0' is {arr.dtype} {arr.shape}, expected uint8 images (N, H, W, 3)")
        return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: neither an .npz file nor a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    images, size = [], None
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(im.convert("RGB"))  # (H, W, 3)
        except OSError as e:
            raise ValueError(f"{f}: unreadable image ({e})") from None
        if size is None:
            size = arr.shape
        elif arr.shape != size:
            raise ValueError(f"{f}: {arr.shape[1]}x{arr.shape[0]} px, but {files[0].name} is {size[1]}x{size[0]}: "
                             "the images of one set must share a size")
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
    return torch.stack(images)  # (N, 3, H, W)


def _feature_net(kind: str, data: str, image_size: int):
    if kind == "inception":
        from detok.eval.inception import load_inception

        return load_inception()
    if kind == "domain":
        if not data:
            raise ValueError("feature_net=domain needs the data set whose classifier to use (--data shapes|fashion-mnist)")
        from detok.data.build import DataConfig
        from detok.eval.domain import load_domain_net

        return load_domain_net(DataConfig(name=data, image_size=image_size or 32))
    raise ValueError(f"unknown feature net {kind!r}; choose inception or domain")


def _features(net, images: torch.Tensor, batch_size: int, desc: str, progress: bool) -> dict[str, torch.Tensor]:
    """Every output of `net` on uint8 images, in batches: {"pool": (N, D), ["spatial"], ["logits"]}."""
    out: dict[str, list[torch.Tensor]] = {}
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress):
        for key, value in net(images[i : i + batch_size]).items():
            out.setdefault(key, []).append(value.float().cpu())
    return {key: torch.cat(parts) for key, parts in out.items()}


def _reference(path: Path, net, batch_size: int, progress: bool):
    """A `Reference` from a statistics / ADM / samples .npz (read as is) or from a folder's images."""
    from detok.eval.refstats import Reference, load_reference

    if path.is_dir():
        feats = _features(net, read_image_set(path), batch_size, "reference", progress)
        ref = Reference.from_features(feats["pool"].numpy(), spatial=feats["spatial"].numpy()
                                      if "spatial" in feats else None, feature_net=net.name,
                                      weights_sha256=net.weights_sha256)
        ref.path = str(path)
        return ref
    return load_reference(path)


def score_sets(
    samples: str | Path, reference: str | Path, *, feature_net: str = "inception", data: str = "",
    image_size: int = 0, batch_size: int = 100, precision_recall: bool = True, progress: bool = True,
) -> dict[str, Any]:
    """FID (+ sFID, IS / classifier score, precision / recall where the inputs allow) of `samples` against
    `reference`, with the recipe; see the module docstring for what each input may be."""
    from detok.eval.features import recipe
    from detok.eval.metrics import FID, SFID, InceptionScore, PrecisionRecall
    from detok.eval.protocol import score_name

    t0 = time.perf_counter()
    images = read_image_set(samples)  # bad inputs fail before any feature net is loaded (or trained)
    if len(images) < 2:
        raise ValueError(f"{samples}: {len(images)} image(s); FID needs at least 2")
    if not Path(reference).exists():
        raise FileNotFoundError(f"reference {reference} does not exist")
    net = _feature_net(feature_net, data, image_size)
    ref = _reference(Path(reference), net, batch_size, progress)
    feats = _features(net, images, batch_size, "samples", progress)
    fid = FID(net, ref)
    fid.update(feats["pool"])
    out: dict[str, Any] = {"fid": float(fid.compute()["fid"])}
    if "spatial" in feats and (ref.mu_s is not None or ref.num_images):
        sfid = SFID(net, ref)
        sfid.update(feats["spatial"])
        out["sfid"] = float(sfid.compute()["sfid"])
    if "logits" in feats and len(images) >= 10:
        score = InceptionScore(net)
        score.update(feats["logits"])
        res = score.compute()
        out[score_name(net)], out[f"{score_name(net)}_std"] = res["is"], res["is_std"]
    if precision_recall and (ref.features is not None or ref.num_images):
        pr = PrecisionRecall(net, ref)
        pr.update(feats["pool"])
        out.update({k: v for k, v in pr.compute().items() if k in ("precision", "recall")})
    out["recipe"] = {**recipe(net), **ref.recipe(), "samples": str(samples), "samples_n": len(images),
                     "samples_size": list(images.shape[-2:])}
    out["seconds"] = time.perf_counter() - t0
    return out
