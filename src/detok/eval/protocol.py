"""Evaluation protocols: generation (CFG search, then final metrics) and reconstruction, with their recipes.

Generation follows MAR / l-DeTok: score each guidance scale with `n_search` samples, then the best with
`n_final` (10k / 50k on ImageNet); cfg = 1 is reported too. Sampling is seeded by sample index
(`sample_images`), so the first `n_search` samples at a scale are the same images in the search and in
the final run: the final run reuses them and draws only the rest. Every number is written with its
recipe: feature net and weights hash, reference statistics and their hash, sample count, sampler
steps, guidance scale and schedule, EMA or raw weights.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from detok import dist
from detok.config import option
from detok.data import build_dataset, collate
from detok.data.build import DataConfig
from detok.eval.features import FeatureNet, recipe
from detok.eval.recon import SSIM_CONVENTION, ReconMetrics, to_uint8
from detok.generators.base import Generator
from detok.generators.sampling import balanced_labels, sample_images
from detok.io import cache_dir, merge_json
from detok.processes.timestep_tokens import prefix_lengths
from detok.tokenizers.base import Tokenizer

log = logging.getLogger(__name__)

SMALL_DATASETS = ("shapes", "fashion-mnist")  # "auto" scores these with the domain classifier


@dataclass
class EvalConfig:
    """How `detok evaluate` scores a run; defaults are the ImageNet protocol of MAR / l-DeTok."""

    feature_net: Literal["auto", "inception", "domain"] = option(
        "auto", "features for FID: inception (ImageNet protocol), domain (a classifier trained on the "
        "dataset), auto = domain for shapes / fashion-mnist, inception otherwise"
    )
    ref_stats: str = option("", "reference statistics (.npz with mu, sigma, or an ADM reference batch); "
                        "empty = computed from the dataset's train split (cached)")
    ref_images: int = option(0, "images of the train split for computed reference statistics (0 = all)")
    cfg_scales: list[float] = field(
        default_factory=lambda: [1.0, 1.5, 2.0, 3.0, 4.0], metadata={"help": "guidance scales searched"}
    )
    n_search: int = option(10000, "samples per scale in the CFG search (paper: 10k)")
    n_final: int = option(50000, "samples for the final metrics at the best scale (paper: 50k)")
    final_cfg1: bool = option(True, "also score cfg = 1 with n_final samples")
    precision_recall: bool = option(True, "k-NN precision / recall (ADM's evaluator) at the final scale")
    steps: str = option("", "sampler steps (what they count: the generator family's sampling); empty = default")
    head_steps: str = option("", "per-token diffusion head steps (MAR, RasterAR, RandomAR); empty = default")
    batch_size: int = option(64, "sampling / feature batch per process")
    seed: int = option(0, "sampling seed (samples are seeded by index: any process count gives the same images)")
    ema: bool = option(True, "evaluate the EMA weights (raw weights if false)")
    recon_images: int = option(0, "tokenizer: val images reconstructed (0 = the whole val split)")
    save_npz: bool = option(False, "write the final samples as ADM's .npz (arr_0 uint8 NHWC, arr_1 labels)")
    domain_steps: int = option(0, "domain classifier training steps when it is not cached (0 = its default)")
    real_floor: Literal["auto", "always", "never"] = option(
        "auto", "also score n_final real val images the same way (FID of real vs the reference: the floor at "
        "this n; the classifier's accuracy on real images: the ceiling); auto = for the domain net, not for "
        "Inception (its features cost about 0.5 s per image per CPU core)"
    )


# ---------------------------------------------------------------------------------------------------
# Feature nets and reference statistics
# ---------------------------------------------------------------------------------------------------


def feature_net_for(
    kind: str, data_cfg: DataConfig, device: torch.device | None = None, domain_steps: int = 0,
    progress: bool = True,
) -> FeatureNet:
    """The FID feature net `kind` (auto / inception / domain) for a dataset, on `device` (None = CPU)."""
    if kind == "auto":
        kind = "domain" if data_cfg.name in SMALL_DATASETS else "inception"
    if kind == "domain":
        from detok.eval.domain import DomainConfig, load_domain_net

        dcfg = DomainConfig(steps=domain_steps) if domain_steps > 0 else None
        return load_domain_net(data_cfg, dcfg, device=device, progress=progress)
    if kind == "inception":
        from detok.eval.inception import load_inception

        return load_inception(device=device)
    raise ValueError(f"unknown feature net {kind!r}; choose auto, inception or domain")


def data_key(data_cfg: DataConfig, split: str, n: int) -> str:
    """A short hash naming (dataset, split, image count) for cached reference statistics."""
    ident = f"{data_cfg.name}|{data_cfg.root}|{data_cfg.file_list}|{data_cfg.image_size}|{data_cfg.seed}|"
    ident += f"{data_cfg.shapes_size}|{split}|{n}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


@torch.no_grad()
def dataset_features(
    net: FeatureNet, dataset: Dataset, n: int = 0, batch_size: int = 256, progress: bool = True
) -> dict[str, np.ndarray]:
    """Features ("pool", and "spatial" when the net has it) of the first n images (0 = all), float32."""
    n = len(dataset) if n <= 0 else min(n, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate)
    out: dict[str, list[np.ndarray]] = {}
    for batch in tqdm(loader, desc="reference features", disable=not progress):
        feats = net(to_uint8(batch["image"]))
        for k in ("pool", "spatial"):
            if k in feats:
                out.setdefault(k, []).append(feats[k].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def reference_for(
    net: FeatureNet, data_cfg: DataConfig, ref_stats: str = "", n: int = 0, progress: bool = True
):
    """Reference statistics: a user's file (`ref_stats`), or the dataset's train split through `net` (cached).

    Computed references are cached under $DETOK_CACHE/refstats, keyed by the data, the image count and
    the feature net's weights hash, with the features kept for precision / recall.
    """
    from detok.eval.refstats import Reference, load_reference, save_reference

    if ref_stats:
        return load_reference(ref_stats)
    path = cache_dir("refstats") / f"{data_key(data_cfg, 'train', n)}-{net.weights_sha256}.npz"
    if path.is_file():
        return load_reference(path)
    feats = dataset_features(net, build_dataset(data_cfg, "train"), n, progress=progress)
    ref = Reference.from_features(
        feats["pool"], spatial=feats.get("spatial"), feature_net=net.name, weights_sha256=net.weights_sha256
    )
    if dist.rank_world()[0] == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_reference(path, ref)
    return ref


# ---------------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------------


class _Scale:
    """Streaming metrics of the samples at one guidance scale: FID, IS / class accuracy (logits), P / R."""

    def __init__(self, net: FeatureNet, ref, cfg: float, precision_recall: bool, score: bool = True) -> None:
        from detok.eval.metrics import FID, InceptionScore, PrecisionRecall

        self.cfg = cfg
        self.fid = FID(net, ref)
        # a feature net without a classifier (fid-helper's Inception file) gives FID / P-R but no IS
        self.inception_score = InceptionScore(net) if score and getattr(net, "fc", True) is not None else None
        self.pr = PrecisionRecall(net, ref) if precision_recall and ref.features is not None else None
        self.correct = torch.zeros(2, dtype=torch.float64)  # right, seen (class-conditional accuracy)
        self.has_logits = False

    def update(self, feats: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.fid.update(feats["pool"])
        if self.pr is not None:
            self.pr.update(feats["pool"])
        if "logits" in feats and self.inception_score is not None:
            self.has_logits = True
            self.inception_score.update(feats["logits"])
        if "logits" in feats:
            pred = feats["logits"].argmax(1).cpu()
            self.correct += torch.tensor([float((pred == labels.cpu()).sum()), float(len(labels))],
                                         dtype=torch.float64)

    def compute(self, final: bool) -> dict[str, Any]:
        """FID (+ class accuracy) during the search; + IS and precision / recall when `final`."""
        res = self.fid.compute()
        out: dict[str, Any] = {"cfg": self.cfg, "fid": float(res["fid"]), "n": int(res["n"])}
        right, seen = dist.all_reduce_sum(self.correct.clone()).tolist()
        if seen:
            out["class_accuracy"] = right / seen
        if final and self.has_logits:
            score = self.inception_score.compute()
            key = score_name(self.fid.net)
            out.update({key: score["is"], f"{key}_std": score["is_std"]})
        if final and self.pr is not None:
            out.update({k: v for k, v in self.pr.compute().items() if k in ("precision", "recall")})
        return out


def score_name(net: FeatureNet) -> str:
    """The key of the IS formula's value: "inception_score" only with Inception's logits; with another
    classifier (the domain net of small data sets) it is that classifier's score, not an Inception Score."""
    return "inception_score" if str(getattr(net, "name", "")).startswith("inception") else "classifier_score"


def _sample_into(
    tracker: _Scale, gen: Generator, tok: Tokenizer, net: FeatureNet, labels: torch.Tensor, start: int, end: int,
    ecfg: EvalConfig, progress: bool, images_out: list | None = None,
) -> None:
    """Samples [start, end) at the tracker's scale (this rank's blocks), through the feature net.

    Sample i is always drawn in block i // batch_size, a whole batch seeded by the block's first index, so it
    is the same image whichever range asks for it (a range that starts or ends inside a block draws the
    whole block and keeps its part): the counts are exact and a continued run equals a fresh one.
    `labels` must cover every index of the blocks touched.
    """
    rank, world = dist.rank_world()
    bs = ecfg.batch_size
    blocks = list(range(start // bs, -(-end // bs)))[rank::world]  # block b goes to rank b % world
    for b in tqdm(blocks, desc=f"cfg {tracker.cfg:g} [{start}, {end})", disable=not progress):
        lo, hi = b * bs, (b + 1) * bs
        images = sample_images(gen, tok, labels[lo:hi], cfg_scale=tracker.cfg, steps=ecfg.steps or None,
                               head_steps=ecfg.head_steps or None, seed=ecfg.seed, batch_size=bs, first_index=lo)
        keep = slice(max(start, lo) - lo, min(end, hi) - lo)  # this range's part of the block
        u8, y = to_uint8(images[keep]), labels[lo:hi][keep]
        tracker.update(net(u8), y)
        if images_out is not None:
            images_out.append((max(start, lo), u8, y))


@torch.no_grad()
def real_reference_points(
    net: FeatureNet, ref, data_cfg: DataConfig, n: int, *, batch_size: int = 250, precision_recall: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The numbers to read a generator's metrics against: the first n real val images scored exactly as
    samples are (`_Scale`: FID against the same reference, class accuracy, P / R when asked).

    FID is biased upwards at small n, so real-vs-real FID at the samples' n is the floor a sample FID is
    compared with; the classifier's accuracy on real images is the ceiling of a sample's class accuracy,
    and 1 / classes its chance level.
    """
    from detok.eval.metrics import IS_SPLITS

    rank, world = dist.rank_world()
    val = build_dataset(data_cfg, "val")
    n = min(n, len(val))
    # the IS formula needs IS_SPLITS splits; a val split smaller than that gives the other numbers only
    tracker = _Scale(net, ref, float("nan"), precision_recall, score=n >= IS_SPLITS)
    loader = DataLoader(Subset(val, range(rank, n, world)), batch_size=batch_size, collate_fn=collate)
    for batch in tqdm(loader, desc="real val images", disable=not progress):
        tracker.update(net(to_uint8(batch["image"])), batch["label"])
    res = tracker.compute(final=True)
    classes = getattr(val, "num_classes", 0)
    out: dict[str, Any] = {"real_fid": res["fid"], "real_n": res["n"]}
    out.update({f"real_{k}": v for k, v in res.items() if k not in ("cfg", "fid", "n")})
    out["chance_class_accuracy"] = 1.0 / classes if classes else None
    return out


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@torch.no_grad()
def score_generator(
    gen: Generator, tok: Tokenizer, net: FeatureNet, ref, ecfg: EvalConfig, progress: bool = True,
    images_out: list | None = None,
) -> dict[str, Any]:
    """CFG search with n_search samples per scale, then n_final at the best (and at cfg = 1).

    Exactly the counts asked for (a last batch may be partial); the final run continues the search's samples
    at the same scale instead of drawing them again, so n_final must be at least n_search.
    """
    _, world = dist.rank_world()
    n_search, n_final = ecfg.n_search, ecfg.n_final
    if n_search < 2 or n_final < n_search:
        raise ValueError(f"eval needs 2 <= n_search <= n_final (got n_search={n_search}, n_final={n_final}): the "
                         "final metrics continue the search's samples")
    labels = balanced_labels(round_up(n_final, ecfg.batch_size), gen.num_classes)  # whole blocks (_sample_into)
    scales = sorted(set(float(s) for s in ecfg.cfg_scales))
    if not scales:
        raise ValueError("eval.cfg_scales is empty")
    trackers: dict[float, _Scale] = {}
    kept: dict[float, list] = {}  # the search's images per scale, when the caller keeps the best scale's
    t0 = time.perf_counter()
    search = []
    for s in scales:
        trackers[s] = _Scale(net, ref, s, ecfg.precision_recall)
        kept[s] = [] if images_out is not None else None
        _sample_into(trackers[s], gen, tok, net, labels, 0, n_search, ecfg, progress, kept[s])
        res = trackers[s].compute(final=False)
        search.append(res)
        if dist.rank_world()[0] == 0:
            log.info("[detok evaluate] cfg %g: FID %.3f (%d samples)", s, res["fid"], res["n"])
    best = min(search, key=lambda r: r["fid"])["cfg"]
    if images_out is not None:
        images_out.extend(kept[best])  # the first n_search of the best scale's n_final samples
    finals = [best] + ([1.0] if ecfg.final_cfg1 and best != 1.0 else [])
    out: dict[str, Any] = {"search": search}
    for s in finals:
        tr = trackers.get(s) or _Scale(net, ref, s, ecfg.precision_recall)
        first = n_search if s in trackers else 0
        _sample_into(tr, gen, tok, net, labels, first, n_final, ecfg, progress,
                     images_out if s == best else None)
        out["best" if s == best else "cfg1"] = tr.compute(final=True)
    if best == 1.0 and ecfg.final_cfg1:
        out["cfg1"] = out["best"]
    out["seconds"] = time.perf_counter() - t0
    out["processes"] = world
    return out


def tokenizer_data_config(tok_spec: str, fallback: DataConfig | None = None) -> DataConfig:
    """The data a detok tokenizer run trained on (at its image size), else `fallback`."""
    from detok.config import from_dict
    from detok.tokenizers.load import run_config

    cfg = run_config(tok_spec)
    if cfg.get("data"):
        data = dict(cfg["data"])
        data["image_size"] = int(cfg.get("tokenizer", {}).get("image_size", data.get("image_size", 256)))
        data["num_workers"] = 0
        return from_dict(DataConfig, data, prefix="data.")
    if fallback is None:
        raise ValueError(f"{tok_spec} is not a detok run: name the dataset (--data / data.name=...)")
    return fallback


def sampler_recipe(gen: Generator, ecfg: EvalConfig) -> dict[str, Any]:
    """Sampler, steps and guidance schedule of a generator, as its config says (steps: eval.steps wins)."""
    cfg = getattr(gen, "cfg", None)
    keys = ("sampler", "sample_steps", "num_sampling_steps", "num_iter", "temperature", "cfg_schedule",
            "cfg_interval_start", "timestep_shift", "cfg_legacy_3ch")
    out = {k: getattr(cfg, k) for k in keys if cfg is not None and hasattr(cfg, k)}
    out["family"] = type(gen).__name__
    out["steps_meaning"] = gen.sampling.steps
    if ecfg.steps:
        out["steps_override"] = ecfg.steps
    if ecfg.head_steps:
        out["head_steps_override"] = ecfg.head_steps
    out.setdefault("cfg_schedule", "constant")
    return out


def evaluate_generator_run(
    run: str | Path, ecfg: EvalConfig, *, tokenizer: Tokenizer | None = None, data_cfg: DataConfig | None = None,
    out_dir: str | Path | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Generation metrics of a generator run (CFG search + final), written to RUN/metrics.json."""
    from detok.generators.load import load_generator
    from detok.tokenizers.load import load_tokenizer

    rank, world = dist.rank_world()
    gen, cfg = load_generator(run, use_ema=ecfg.ema)
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg["tokenizer"])
    device = next(tok.parameters()).device
    gen.to(device)
    data_cfg = data_cfg or tokenizer_data_config(cfg["tokenizer"])
    net = feature_net_for(ecfg.feature_net, data_cfg, device, ecfg.domain_steps, progress and rank == 0)
    ref = reference_for(net, data_cfg, ecfg.ref_stats, ecfg.ref_images, progress=progress and rank == 0)
    images: list | None = [] if ecfg.save_npz else None
    res = score_generator(gen, tok, net, ref, ecfg, progress=progress and rank == 0, images_out=images)
    floor = ecfg.real_floor == "always" or (ecfg.real_floor == "auto" and not str(net.name).startswith("inception"))
    if floor:
        res["reference_points"] = real_reference_points(
            net, ref, data_cfg, ecfg.n_final, batch_size=ecfg.batch_size, precision_recall=ecfg.precision_recall,
            progress=progress and rank == 0)
    else:
        res["reference_points"] = {"real_fid": None, "why": f"real_floor={ecfg.real_floor} with {net.name} features "
                                   "(eval.real_floor=always computes it)"}
    res["recipe"] = {
        **recipe(net),
        "reference": {"path": ecfg.ref_stats or "computed: train split", "sha256": getattr(ref, "sha256", ""),
                      "n": int(getattr(ref, "n", 0))},
        "n_search": res["search"][0]["n"], "n_final": res["best"]["n"], "cfg_scales": ecfg.cfg_scales,
        "weights": "ema" if ecfg.ema else "raw", "seed": ecfg.seed, "sampler": sampler_recipe(gen, ecfg),
        "generator": str(run), "tokenizer": str(cfg["tokenizer"]), "data": data_cfg.name,
        "image_size": data_cfg.image_size,
    }
    out = Path(out_dir or run)
    if rank == 0:
        if images is not None:
            _save_npz(images, out / "samples.npz")
            res["npz"] = str(out / "samples.npz")
        merge_json(out / "metrics.json", {"generation": res})
    return res


def _save_npz(images: list, path: Path) -> None:
    """ADM layout: arr_0 uint8 (N, H, W, 3), arr_1 labels; this process's samples in index order."""
    images = sorted(images, key=lambda t: t[0])
    u8 = torch.cat([t[1] for t in images]).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    labels = torch.cat([t[2] for t in images]).numpy()
    np.savez(path, arr_0=u8, arr_1=labels)




# ---------------------------------------------------------------------------------------------------
# Reconstruction
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_tokenizer(
    tok: Tokenizer, data_cfg: DataConfig, ecfg: EvalConfig, *, split: str = "val", progress: bool = True,
    lpips_net: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """rFID (reconstructions vs the originals, as l-DeTok's val statistics), PSNR, SSIM, LPIPS (if weights)."""
    from detok.eval.metrics import GaussianStats

    rank, world = dist.rank_world()
    device = next(tok.parameters()).device
    net = feature_net_for(ecfg.feature_net, data_cfg, device, ecfg.domain_steps, progress)
    dataset = build_dataset(data_cfg, split)
    n = len(dataset) if ecfg.recon_images <= 0 else min(ecfg.recon_images, len(dataset))
    idx = list(range(rank, n, world))
    loader = DataLoader(Subset(dataset, idx), batch_size=ecfg.batch_size, collate_fn=collate)
    discrete = bool(getattr(tok, "discrete", False))
    # a DDT tokenizer: every prefix length j of the prefix curve (j = K last: the full reconstruction)
    js = prefix_lengths(tok.num_tokens) if discrete and tok.prefix_order else [None]
    real = GaussianStats(net.dim)
    fake = {j: GaussianStats(net.dim) for j in js}
    rec = {j: ReconMetrics(distributed=True) for j in js}
    lp_sum = torch.zeros(2, dtype=torch.float64)
    t0 = time.perf_counter()
    for batch in tqdm(loader, desc="reconstruct", disable=not progress):
        x = batch["image"].to(device)
        real.update(net(to_uint8(x))["pool"])
        ids = tok.tokenize(x) if discrete else None
        for j in js:
            if discrete:  # decoding noise seeded by the batch's first global index: the same for every j
                g = torch.Generator(device=device).manual_seed(ecfg.seed * 1_000_003 + int(batch["index"][0]))
                known = {} if j is None else {"known": j}
                y = tok.detokenize(ids, rng=g, **known).float().clamp(-1, 1)
            else:
                y = tok.decode(tok.encode(x)).float().clamp(-1, 1)
            rec[j].update(x, y)
            fake[j].update(net(to_uint8(y))["pool"])
        if lpips_net is not None:  # of the full reconstruction
            d = lpips_net(x, y).flatten()
            lp_sum += torch.tensor([float(d.sum()), float(d.numel())], dtype=torch.float64)
    from detok.eval.frechet import frechet_distance

    mu_r, sig_r, n_r = real.compute()
    by_j = {}
    for j in js:
        mu_f, sig_f, _ = fake[j].compute()
        by_j[j] = {**rec[j].compute(), "rfid": float(frechet_distance(mu_f, sig_f, mu_r, sig_r))}
    out = dict(by_j[js[-1]])
    if js[0] is not None:
        out["by_tokens"] = {str(j): {k: v for k, v in m.items() if k != "n"} for j, m in by_j.items()}
    lp = dist.all_reduce_sum(lp_sum)
    out["lpips"] = float(lp[0] / lp[1]) if lp[1] > 0 else None
    out["recipe"] = {**recipe(net), "reference": f"originals of the {split} split (same images)", "n": int(n_r),
                     "split": split, "data": data_cfg.name, "image_size": data_cfg.image_size,
                     "uint8": "round((x + 1) * 127.5), clamped",
                     "encode": ("token ids; decoded from the first j AR-order tokens by "
                                f"{tok.cfg.sample_steps} Euler steps, seed {ecfg.seed}" if discrete
                                else "posterior mean, no noise, no mask"),
                     "ssim": SSIM_CONVENTION,
                     "lpips": "LPIPS-VGG16 v0.1" if lpips_net is not None else "not computed (no VGG16 weights)"}
    out["seconds"] = time.perf_counter() - t0
    return out
