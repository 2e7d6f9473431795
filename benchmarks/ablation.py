"""The l-DeTok ablation at CPU scale, with detok's own commands: does latent denoising make generators better?

For each dataset and tokenizer variant (and seed): train a tokenizer with the quickstart recipe at the study's
size (16 px, 4x4x4 latents, 1000 steps) and only the corruption changed, score its reconstructions, normalise
its latents by posterior-sample statistics, then train each generator on its latents under one budget
(`detok bench tokenizer`'s cells: same recipe, same steps) and score them with the domain-classifier FID
after a CFG search. Everything is cached on disk: finished tokenizers, evaluations and cells are skipped and
unfinished runs resume, so the grid can be stopped and continued.

    python benchmarks/ablation.py                            # main grid, both datasets (writes docs/results/)
    python benchmarks/ablation.py --data shapes --extra ""   # one dataset (run two of these side by side)
    python benchmarks/ablation.py --grid all                 # + gamma and mask sweeps
    python benchmarks/ablation.py --quick --out /tmp/abl     # smoke test: a few steps per run

Outputs: OUT/<dataset>/<variant>-s<seed>/ (tokenizer run), OUT/<dataset>/bench/ (generator cells and the
tokenizer x generator table), docs/results/ablation.json (one row per dataset x variant x seed x tokenizer
steps); `--robustness` adds docs/results/ablation_robustness.json; benchmarks/ablation_report.py draws them.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"fashion-mnist": "quickstart_fashion", "shapes": "quickstart_shapes"}
# warmup in epochs = 30 steps of batch 32 (the recipes' 0.1 epoch is 188 steps on Fashion-MNIST's 60k images)
WARMUP = {"fashion-mnist": 0.016, "shapes": 0.048}
DEFAULT_TOK_STEPS = 1000
# the study's tokenizer shape and batch, pinned here so that retuning the quickstart presets does not move it
STUDY_PINS = ("tokenizer.patch_size=4", "train.global_batch_size=32")
V2_TOK_STEPS, V2_GEN_STEPS, V2_DECODER_FT_STEPS = 3000, 1500, 400  # protocol v2 (docs/RESULTS.md)
STATS_IMAGES = 4096  # train images for the latent statistics (as the quickstart recipes)
# name -> (noise, gamma, M): the paper's ablation rows, then its gamma and mask sweeps
# (in the order they run: the baseline-vs-joint comparison first)
MAIN = {
    "baseline": ("none", 0.0, 0.0),
    "joint": ("interpolative", 3.0, 0.7),
    "noise": ("interpolative", 3.0, 0.0),
    "additive": ("additive", 3.0, 0.0),
    "mask": ("none", 0.0, 0.7),
}
GAMMA = {f"gamma{g:g}": ("interpolative" if g else "none", g, 0.0) for g in (1.0, 2.0, 4.0)}
MASK = {f"mask{m:g}": ("interpolative", 3.0, m) for m in (0.3, 0.5, 0.9)}
# our mitigations of the train / inference mismatch, both joint: joint_anneal fades tau and the mask ratio to 0
# over the last third of tokenizer training (`corruption_anneal`), so the decoder ends on clean latents with its
# encoder; joint_told tells the decoder the noise level (TOKENIZER_EXTRA below)
MITIGATION = {"joint_anneal": ("interpolative", 3.0, 0.7), "joint_told": ("interpolative", 3.0, 0.7)}
ANNEAL = {"joint_anneal": 1 / 3}  # variant -> corruption_anneal (fraction of the last steps); others 0
# variant -> tokenizer fields beyond (noise, gamma, M), in its stage key and in every stage that rebuilds it;
# joint_told: the second mitigation, a decoder told the noise level tau of its input (0 at inference)
TOKENIZER_EXTRA = {"joint_told": {"decoder_noise_cond": True}}


def variants(grid: str) -> dict[str, tuple[str, float, float]]:
    out = dict(MAIN)
    if grid in ("gamma", "all"):
        out.update(GAMMA)
    if grid in ("mask", "all"):
        out.update(MASK)
    if grid in ("mitigation", "all"):
        out.update(MITIGATION)
    return out


def plan(datasets: list[str], grid: str, seeds: list[int], extra: list[str]) -> list[tuple[str, str, int]]:
    """(dataset, variant, seed) in run order: every variant at `seeds`, then the extra seeds (`data:variant:seed`)."""
    rows = [(d, name, s) for d in datasets if d for name in variants(grid) for s in seeds]
    for item in extra:
        d, name, s = item.split(":")
        if d not in PRESETS or name not in variants("all"):
            raise ValueError(f"--extra {item!r}: expected dataset:variant:seed with a dataset of {sorted(PRESETS)}")
        if (d, name, int(s)) not in rows:
            rows.append((d, name, int(s)))
    return rows


def seed_summary(cells: list[dict]) -> dict:
    """Per-seed generator cells -> mean and standard error of FID and class accuracy, and every seed's cell."""
    import statistics

    out: dict = {"seeds": cells, "n_seeds": len(cells)}
    for key in ("fid", "class_accuracy"):
        vals = [c[key] for c in cells if c.get(key) is not None]
        if vals:
            out[key] = statistics.mean(vals)
            out[f"{key}_se"] = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else None
    return out


def save_rows(path: Path, rows: list[dict], meta: dict) -> None:
    """Merge `rows` into the results file by (protocol, dataset, variant, seed, tokenizer steps), under a lock (grids
    run side by side). A row that is already there keeps the generators the new one did not run (a later
    `--generators mar` adds MAR to a row of SiT cells; the stage records guarantee the same tokenizer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        top = json.loads(path.read_text()) if path.is_file() else {}
        old = top.pop("rows", [])
        key = lambda r: (r.get("protocol", "v1"), r["dataset"], r["variant"], r["seed"], r["tok_steps"])  # noqa: E731
        merged = {key(r): r for r in old}
        for r in rows:
            kept = merged.get(key(r), {}).get("generators", {})
            merged[key(r)] = {**r, "generators": {**kept, **r["generators"]}}
        order = {v: i for i, v in enumerate(variants("all"))}
        out = sorted(merged.values(), key=lambda r: (r.get("protocol", "v1"), r["dataset"], r["tok_steps"],
                                                     order[r["variant"]], r["seed"]))
        tmp = path.with_suffix(".tmp")
        protocol = meta.get("protocol", "v1")
        top.setdefault("protocols", {})[protocol] = meta  # each protocol's settings; v1's also at the top level
        if protocol == "v1":
            top.update(meta)
        tmp.write_text(json.dumps({**top, "rows": out}, indent=2, default=str))
        tmp.replace(path)


STAGE_FILE = "ablation_stage.json"  # what produced a cached stage; a rerun asking for anything else is refused


class StageMismatch(ValueError):
    """A cached stage (tokenizer, its metrics, a generator cell) was produced by other settings."""


def check_stage(folder: Path, key: dict) -> None:
    """Record `key` (the full settings of the stage cached in `folder`) or refuse when it differs from the recorded one.

    A folder without a record (written before records existed) gets this one: its settings cannot be checked."""
    path = folder / STAGE_FILE
    key = json.loads(json.dumps(key, default=str))
    if path.is_file():
        old = json.loads(path.read_text())
        if old != key:
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            shown = "; ".join(f"{k}: cached {old.get(k)!r}, asked {key.get(k)!r}" for k in diff[:4])
            raise StageMismatch(f"{folder} was produced with other settings ({shown}); use another --out or remove it")
        return
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(key, indent=2, sort_keys=True))


def train_tokenizer(data: str, name: str, spec: tuple[str, float, float], seed: int, run: Path, steps: int,
                    latent_dim: int, image_size: int, kl_scale: str = "sum") -> dict:
    """Train (or resume, or skip when finished) one tokenizer variant; its summary."""
    from detok.runs.config import tokenizer_config
    from detok.runs.train import train_tokenizer as train

    noise, gamma, mask = spec
    key = {"stage": "tokenizer", "data": data, "preset": PRESETS[data], "variant": name, "noise": noise,
           "gamma": gamma, "mask_ratio": mask, "seed": seed, "steps": steps, "latent_dim": latent_dim,
           "image_size": image_size, "warmup_epochs": WARMUP[data]}
    if kl_scale != "sum":  # v1 records have no kl_scale (they all used the paper's sum)
        key["kl_scale"] = kl_scale
    anneal = ANNEAL.get(name, 0.0)
    if anneal:  # only the mitigation rows carry it (older records have none)
        key["corruption_anneal"] = anneal
    key.update(TOKENIZER_EXTRA.get(name, {}))
    check_stage(run, key)
    done = run / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = [f"train.out_dir={run}", f"train.seed={seed}", f"tokenizer.noise={noise}", f"tokenizer.gamma={gamma}",
                 f"tokenizer.mask_ratio={mask}", f"tokenizer.latent_dim={latent_dim}",
                 f"tokenizer.image_size={image_size}", "train.progress=false", f"optim.warmup_epochs={WARMUP[data]}",
                 f"loss.kl_scale={kl_scale}", f"corruption_anneal={anneal}", *STUDY_PINS, *extra_overrides(name)]
    if steps:
        overrides.append(f"train.max_steps={steps}")
    cfg = tokenizer_config(None, [PRESETS[data]], overrides)
    resume = (run / "checkpoints" / "latest").exists()
    return train(cfg, resume=resume, recon_images=256)


def extra_overrides(name: str) -> list[str]:
    """The config overrides of a variant's TOKENIZER_EXTRA fields."""
    return [f"tokenizer.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TOKENIZER_EXTRA.get(name, {}).items()]


def finetune_decoder(data: str, run: Path, steps: int, image_size: int, latent_dim: int, kl_scale: str,
                     extra: list[str] = ()) -> Path:
    """Decoder fine-tuning on clean latents (frozen encoder: the latent space is the tokenizer's), cached in
    RUN/decoder_ft; the fine-tuned run's folder."""
    from detok.runs.config import tokenizer_config
    from detok.runs.train import train_tokenizer as train

    ft = run / "decoder_ft"
    check_stage(ft, {"stage": "decoder fine-tuning", "data": data, "init_from": str(run), "steps": steps,
                     "image_size": image_size, "latent_dim": latent_dim, "kl_scale": kl_scale})
    if not (ft / "summary.json").is_file():
        overrides = [f"init_from={run}", f"train.out_dir={ft}", f"train.max_steps={steps}", "train.progress=false",
                     f"tokenizer.latent_dim={latent_dim}", f"tokenizer.image_size={image_size}",
                     f"loss.kl_scale={kl_scale}", *STUDY_PINS, "decoder_only=true", "tokenizer.gamma=0.0", "tokenizer.mask_ratio=0.0",
                     *extra]
        cfg = tokenizer_config(None, [PRESETS[data], "quickstart_decoder_ft"], overrides)
        train(cfg, resume=(ft / "checkpoints" / "latest").exists(), recon_images=256)
    return ft


def tokenizer_metrics(run: Path, ecfg) -> dict:
    """rFID / PSNR / SSIM of a tokenizer (cached in RUN/metrics.json)."""
    from detok.eval.protocol import evaluate_tokenizer, tokenizer_data_config
    from detok.io import merge_json
    from detok.tokenizers.load import load_tokenizer

    path = run / "metrics.json"
    check_stage(run / "metrics_stage", {"stage": "tokenizer metrics", "eval": vars(ecfg)})
    if path.is_file() and "reconstruction" in json.loads(path.read_text()):
        return json.loads(path.read_text())["reconstruction"]
    tok = load_tokenizer(run)
    res = evaluate_tokenizer(tok, tokenizer_data_config(str(run)), ecfg, progress=False)
    merge_json(path, {"reconstruction": res})
    return res


@torch.no_grad()
def robustness(run: Path, ecfg, sigmas: tuple[float, ...] = (0.0, 0.5, 1.0), n: int = 1000) -> dict:
    """How each decoder takes perturbed latents, the mechanism the paper credits: decode(z + sigma * eps) for the
    normalised posterior means z of n val images (sigma in units of the latent std), scored against the clean
    images by PSNR and by the domain FID."""
    from detok.data import build_dataset
    from detok.eval.metrics import FID
    from detok.eval.protocol import feature_net_for, tokenizer_data_config
    from detok.eval.recon import to_uint8
    from detok.tokenizers.load import load_tokenizer

    tok = load_tokenizer(run).eval()
    data_cfg = tokenizer_data_config(str(run))
    net = feature_net_for(ecfg.feature_net, data_cfg, torch.device("cpu"), ecfg.domain_steps, False)
    val = build_dataset(data_cfg, "val")
    x = torch.stack([val[i]["image"] for i in range(min(n, len(val)))])  # (n, 3, S, S) in [-1, 1]
    clean = FID(net)
    clean.update(to_uint8(x))
    reference = clean.statistics()
    z = tok.normalize(tok.encode(x))  # (n, C, h, w), unit variance per channel
    g = torch.Generator().manual_seed(0)
    out = {}
    for sigma in sigmas:
        y = tok.decode(tok.denormalize(z + sigma * torch.randn(z.shape, generator=g))).clamp(-1, 1)
        mse = (y - x).pow(2).flatten(1).mean(1)  # (n,) in [-1, 1] units: peak-to-peak 2
        fid = FID(net, reference)
        fid.update(to_uint8(y))
        out[f"{sigma:g}"] = {"psnr": float((10 * torch.log10(4 / mse.clamp_min(1e-10))).mean()),
                             "fid": float(fid.compute()["fid"])}
    return out


def fill_robustness(results: Path, out: Path, ecfg) -> None:
    """Robustness of every tokenizer in the results file, cached in ablation_robustness.json (by run name)."""
    path = results.with_name(results.stem + "_robustness.json")
    done = json.loads(path.read_text()) if path.is_file() else {}
    for r in json.loads(results.read_text())["rows"]:
        steps = r.get("tok_steps") or DEFAULT_TOK_STEPS
        name = f"{r['dataset']}/{r['variant']}-s{r['seed']}" + (f"-t{steps}" if steps != DEFAULT_TOK_STEPS else "")
        if name in done:
            continue
        print(f"[ablation] robustness {name}", flush=True)
        done[name] = robustness(out / name, ecfg)
        path.write_text(json.dumps(done, indent=2))


@torch.no_grad()
def secondary_endpoints(tok, data_cfg, cells: list[tuple[Path, float]], ecfg, n: int, seed: int = 0) -> dict:
    """Protocol v2's mechanism endpoints of one tokenizer (its decoder as the generators use it), at n images each,
    against the primary endpoint's reference (the same feature net and train-split statistics):

    - `perfect_fid`: FID of decoded posterior samples of n val images, the FID of a generator whose latents are
      exactly the tokenizer's; a cell's `excess_fid` is its final FID minus this (what the generator adds);
    - `latent_fd`: Frechet distance between n latents of each generator cell (`cells`: run folder and its best
      CFG scale, balanced classes) and n normalised posterior samples of val images, flattened (C*h*w numbers),
      the distance of the two distributions where the generator models them;
    - `ifid` (arXiv 2603.05630): FID of decoded midpoints 0.5 (z_i + z_j) between each val image's normalised
      posterior mean z_i and its nearest other val latent z_j (L2), how well the space between latents decodes.
    """
    from detok.data import build_dataset
    from detok.eval.frechet import frechet_distance, gaussian_stats
    from detok.eval.metrics import FID
    from detok.eval.protocol import feature_net_for, reference_for
    from detok.eval.recon import to_uint8
    from detok.generators.load import load_generator
    from detok.generators.sampling import balanced_labels
    from detok.tokenizers.base import DiagonalGaussian

    net = feature_net_for(ecfg.feature_net, data_cfg, torch.device("cpu"), ecfg.domain_steps, False)
    ref = reference_for(net, data_cfg, ecfg.ref_stats, ecfg.ref_images, progress=False)
    val = build_dataset(data_cfg, "val")
    n = min(n, len(val))
    bs = ecfg.batch_size
    g = torch.Generator().manual_seed(seed)
    perfect, means, samples = FID(net, ref), [], []
    for start in range(0, n, bs):
        x = torch.stack([val[i]["image"] for i in range(start, min(n, start + bs))])  # (b, 3, S, S) in [-1, 1]
        post = DiagonalGaussian(tok.encode_moments(x))  # moments (b, 2C, h, w)
        mean, z = post.mean, post.sample(g)  # (b, C, h, w) each: posterior mean, a posterior sample
        perfect.update(to_uint8(tok.decode(z).float().clamp(-1, 1)))
        means.append(tok.normalize(mean).flatten(1))  # (b, C*h*w)
        samples.append(tok.normalize(z).flatten(1))  # (b, C*h*w)
    means_t, real = torch.cat(means), torch.cat(samples).double().numpy()  # (n, D) each
    out: dict = {"n": n, "perfect_fid": float(perfect.compute()["fid"])}
    mu_r, sigma_r = gaussian_stats(real)
    out["cells"] = {}
    for cell_dir, cfg_scale in cells:
        gen, _ = load_generator(cell_dir, use_ema=ecfg.ema)
        gen.eval()
        labels = balanced_labels(n, gen.num_classes)
        zs = []
        for start in range(0, n, bs):
            y = labels[start : start + bs]
            rng = torch.Generator().manual_seed(ecfg.seed * 1_000_003 + start)  # as sample_images seeds a batch
            zs.append(gen.sample(len(y), y, cfg_scale=cfg_scale, rng=rng).flatten(1))  # (b, C*h*w) normalised
        mu_g, sigma_g = gaussian_stats(torch.cat(zs).double().numpy())
        out["cells"][cell_dir.name] = {"cfg": cfg_scale, "latent_fd": float(frechet_distance(mu_g, sigma_g, mu_r,
                                                                                             sigma_r))}
    d = torch.cdist(means_t, means_t)  # (n, n) L2 in normalised latent space
    d.fill_diagonal_(float("inf"))
    nearest = d.argmin(1)  # (n,) each latent's nearest other latent
    ifid = FID(net, ref)
    for start in range(0, n, bs):
        idx = torch.arange(start, min(n, start + bs))
        mid = 0.5 * (means_t[idx] + means_t[nearest[idx]])  # (b, C*h*w) midpoints
        z = tok.denormalize(mid.view(len(idx), *tok.latent_shape))  # (b, C, h, w)
        ifid.update(to_uint8(tok.decode(z).float().clamp(-1, 1)))
    out["ifid"] = float(ifid.compute()["fid"])
    return out


def fill_secondary(results: Path, out: Path, ecfg, n: int) -> None:
    """The mechanism endpoints of every finished v2 row in the results file, cached by run name in
    ablation_secondary.json (beside it): perfect FID, each cell's excess FID and latent Frechet distance, iFID.
    A row that gained generator cells since (e.g. MAR added to a SiT row) gets the new cells' endpoints."""
    from detok.eval.protocol import tokenizer_data_config
    from detok.tokenizers.latents import LatentCache
    from detok.tokenizers.load import load_tokenizer

    path = results.with_name(results.stem + "_secondary.json")
    done = json.loads(path.read_text()) if path.is_file() else {}
    for r in json.loads(results.read_text())["rows"]:
        if r.get("protocol") != "v2":
            continue
        row_name = f"{r['variant']}-s{r['seed']}-t{r['tok_steps']}"
        name = f"{r['dataset']}/{row_name}"
        run = out / r["dataset"] / "v2" / row_name / "decoder_ft"
        bench = out / r["dataset"] / "v2" / "bench" / row_name
        wanted = [(g, cell) for g, summary in r["generators"].items() for cell in summary.get("seeds", [summary])]
        missing = [(g, cell) for g, cell in wanted if f"{g}-g{cell['seed']}" not in done.get(name, {}).get("cells", {})]
        if not missing or not (run / "summary.json").is_file():
            print(f"[ablation] secondary {name}: " + ("cached" if not missing else f"no run at {run}, skipped"))
            continue
        tok = load_tokenizer(run).eval()
        meta = LatentCache(bench / "latents").meta  # the statistics the generators were trained and scored with
        tok.set_stats(torch.tensor(meta["latent_mean"]), torch.tensor(meta["latent_std"]))
        LatentCache(bench / "latents").check(tok)
        cells = [(bench / f"{g}-g{cell['seed']}", float(cell["cfg"])) for g, cell in missing]
        if not all((d / "cell.json").is_file() for d, _ in cells):  # a row of the file whose rerun is under way
            print(f"[ablation] secondary {name}: generator cells not finished, skipped", flush=True)
            continue
        t0 = time.perf_counter()
        res = secondary_endpoints(tok, tokenizer_data_config(str(run)), cells, ecfg, n)
        for g, cell in missing:
            res["cells"][f"{g}-g{cell['seed']}"]["excess_fid"] = float(cell["fid"]) - res["perfect_fid"]
        res["seconds"] = time.perf_counter() - t0
        if name in done:  # the same tokenizer, decoder and seed: its floor is recomputed identically
            res["cells"] = {**done[name]["cells"], **res["cells"]}
            res["seconds"] += done[name].get("seconds", 0.0)
        done[name] = res
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=2))
        tmp.replace(path)
        print(f"[ablation] secondary {name}: perfect FID {res['perfect_fid']:.2f}, iFID {res['ifid']:.2f}, latent FD "
              + ", ".join(f"{k} {c['latent_fd']:.3f}" for k, c in res["cells"].items()), flush=True)


def main(argv: list[str] | None = None) -> None:
    from detok.config import resolve
    from detok.data import build_dataset, collate
    from detok.eval.protocol import EvalConfig, tokenizer_data_config
    from detok.eval.table import write_table
    from detok.runs.bench import BenchConfig, prepare_latents, run_cell
    from detok.runs.config import generator_recipe
    from detok.tokenizers.latents import latent_stats
    from detok.tokenizers.load import load_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion-mnist,shapes")
    p.add_argument("--grid", default="main", choices=["main", "gamma", "mask", "mitigation", "all"],
                   help="main: the paper's five rows; gamma / mask: + its sweeps; mitigation: + joint_anneal, joint_told; all: every row")
    p.add_argument("--generators", default="sit,mar")
    p.add_argument("--seeds", default="0", help="seeds of every variant (comma list)")
    p.add_argument("--extra", default="fashion-mnist:baseline:1,fashion-mnist:joint:1",
                   help="more rows, dataset:variant:seed (comma list): the seeds of the mean-and-spread comparison")
    p.add_argument("--image-size", type=int, default=16,
                   help="pixels per side (patch 4: a 4x4 latent grid at 16 px, 8x8 at the recipes' 32 px)")
    p.add_argument("--latent-dim", type=int, default=4, help="latent channels: 4x4x4 = 12x fewer numbers than 16x16x3")
    p.add_argument("--tok-steps", type=int, default=DEFAULT_TOK_STEPS, help="tokenizer steps (0 = the recipe's 500)")
    p.add_argument("--gen-steps", type=int, default=None, help="steps of every generator (default 300; --quick: 2)")
    p.add_argument("--stats-of", default="sample", choices=["mean", "sample"],
                   help="normalise latents by statistics of posterior samples (default) or means (upstream)")
    p.add_argument("--cache-images", type=int, default=None,
                   help="train images encoded for the generators (default 10000; --quick: 256)")
    p.add_argument("--eval", dest="eval_overrides", action="append", default=[], metavar="key=value")
    p.add_argument("--out", default=str(REPO / "runs" / "ablation16"))
    p.add_argument("--results", default=str(REPO / "docs" / "results" / "ablation.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--robustness", action="store_true",
                   help="only score how each finished tokenizer decodes perturbed latents (ablation_robustness.json)")
    p.add_argument("--secondary", action="store_true",
                   help="v2: add the mechanism endpoints (perfect-generator FID, excess FID, latent Frechet distance, "
                        "iFID) of every finished v2 row to ablation_secondary.json")
    p.add_argument("--quick", action="store_true", help="3 tokenizer / 2 generator steps, 64 samples")
    p.add_argument("--protocol", default="v1", choices=["v1", "v2"],
                   help="v2 (docs/RESULTS.md): 3000-step tokenizers with the size-invariant KL, decoder fine-tuning, "
                        "1500-step generators x 3 seeds, CFG {1, 1.5, 2, 3} x 512, final 2048")
    p.add_argument("--gen-seeds", default="", help="generator seeds per tokenizer (default: the tokenizer's; v2: 0,1,2)")
    args = p.parse_args(argv)
    v2 = args.protocol == "v2"
    if v2:
        if args.tok_steps == DEFAULT_TOK_STEPS:
            args.tok_steps = V2_TOK_STEPS
        if args.gen_steps is None:
            args.gen_steps = V2_GEN_STEPS
        args.gen_seeds = args.gen_seeds or "0,1,2"
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    evals = ["n_search=256", "n_final=512", "cfg_scales=[1.5,3.0]", "final_cfg1=false", "recon_images=1000"]
    if v2:
        evals += ["n_search=512", "n_final=2048", "cfg_scales=[1.0,1.5,2.0,3.0]"]
    evals += args.eval_overrides
    if args.quick:
        args.tok_steps, args.gen_steps = 3, 2 if args.gen_steps is None else args.gen_steps
        evals += ["n_search=64", "n_final=64", "cfg_scales=[1.0,2.0]", "recon_images=64", "domain_steps=20",
                  "batch_size=64", "ref_images=512"]
        args.cache_images = 256 if args.cache_images is None else args.cache_images
        args.results = str(out / "ablation.json")
    args.gen_steps = 300 if args.gen_steps is None else args.gen_steps
    args.cache_images = 10000 if args.cache_images is None else args.cache_images
    ecfg = resolve(EvalConfig, ["eval_small"], evals)
    if args.robustness:
        fill_robustness(Path(args.results), out, ecfg)
        return
    if args.secondary:
        fill_secondary(Path(args.results), out, ecfg, ecfg.n_final)
        return
    ft_steps = 3 if args.quick else V2_DECODER_FT_STEPS
    gens = [g for g in args.generators.split(",") if g]
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [e for e in args.extra.split(",") if e]
    meta = {"protocol": args.protocol, "eval": vars(ecfg), "gen_steps": args.gen_steps,
            "gen_seeds": args.gen_seeds, "default_tok_steps": DEFAULT_TOK_STEPS,
            "latent_dim": args.latent_dim, "image_size": args.image_size, "generators": gens, "stats_of": args.stats_of}
    rows, t0 = [], time.perf_counter()
    for data, name, seed in plan(args.data.split(","), args.grid, seeds, extra):
        spec = variants("all")[name]
        # a tokenizer budget other than the grid's is its own run (the budget check of the same variants)
        row_name = f"{name}-s{seed}" + (f"-t{args.tok_steps}" if args.tok_steps != DEFAULT_TOK_STEPS else "")
        run = out / data / (f"v2/{row_name}" if v2 else row_name)
        t_row = time.perf_counter()
        print(f"[ablation] {data} {row_name}: tokenizer", flush=True)
        kl_scale = "latent_size" if v2 else "sum"
        tok_summary = train_tokenizer(data, name, spec, seed, run, args.tok_steps, args.latent_dim, args.image_size,
                                      kl_scale)
        stage1 = run
        if v2:  # every variant's decoder fine-tuned on clean latents; generators and metrics use it
            print(f"[ablation] {data} {row_name}: decoder fine-tuning", flush=True)
            run = finetune_decoder(data, run, ft_steps, args.image_size, args.latent_dim, kl_scale, extra_overrides(name))
        rec = tokenizer_metrics(run, ecfg)
        rec_stage1 = tokenizer_metrics(stage1, ecfg) if v2 else None
        tok = load_tokenizer(run)
        data_cfg = tokenizer_data_config(str(run))
        # generators see posterior samples: normalise by their statistics (a 300-step tokenizer's posterior noise
        # is still large; scaled by the means' std it would be noise of std ~3 in a low-signal channel)
        train_set = build_dataset(data_cfg, "train")
        tok.set_stats(*latent_stats(tok, train_set, torch.device("cpu"), max_images=STATS_IMAGES, collate=collate,
                                    progress=False, of=args.stats_of))
        gen_seeds = [int(x) for x in args.gen_seeds.split(",")] if args.gen_seeds else [seed]
        bench_dir = out / data / ("v2/bench" if v2 else "bench")
        benches = {gs: BenchConfig(generators=gens, steps=args.gen_steps, seed=gs, eval=ecfg,
                                   cache_images=args.cache_images, overrides=["train.progress=false", "sample.per_class=4"])
                   for gs in gen_seeds}

        def cell_dir(g: str, gs: int, bench_dir: Path = bench_dir, row_name: str = row_name, seed: int = seed) -> Path:
            """v1 (one generator seed = the tokenizer's): ROW/g as before; several seeds: ROW/g-gSEED."""
            return bench_dir / row_name / (g if gs == seed and not args.gen_seeds else f"{g}-g{gs}")

        for gs, bench in benches.items():  # every cell's settings checked before its latents are (re)used
            for g in gens:
                check_stage(cell_dir(g, gs),
                            {"stage": "generator cell", "generator": g, "steps": bench.steps, "seed": bench.seed,
                             "cache_images": bench.cache_images, "overrides": bench.overrides, "eval": vars(ecfg),
                             "stats_of": args.stats_of, "stats_images": STATS_IMAGES,
                             **({"tokenizer": str(run), "recipe": generator_recipe(g)} if v2 else {})})
        cache = prepare_latents(tok, str(run), data_cfg, bench_dir / row_name, torch.device("cpu"),
                                progress=False, max_images=args.cache_images)
        cells = {}
        for g in gens:
            per_seed = []
            for gs, bench in benches.items():
                print(f"[ablation] {data} {row_name}: {g} seed {gs}", flush=True)
                cell = run_cell(tok, str(run), cache, g, cell_dir(g, gs), bench, data_cfg, row=row_name)
                per_seed.append({k: cell.get(k) for k in ("fid", "cfg", "feature_net", "n", "class_accuracy",
                                                          "precision", "recall", "search", "train_seconds",
                                                          "eval_seconds", "final_loss", "seed")})
            cells[g] = per_seed[0] if len(per_seed) == 1 else seed_summary(per_seed)
        write_table(bench_dir)
        noise, gamma, mask = spec
        row = {"dataset": data, "variant": name, "tok_steps": args.tok_steps, "gamma": gamma, "mask_ratio": mask,
               "noise": noise if gamma else "none", "corruption_anneal": ANNEAL.get(name, 0.0),
               **TOKENIZER_EXTRA.get(name, {}), "seed": seed, "rfid": rec["rfid"],
               "psnr": rec["psnr"], "ssim": rec["ssim"], "tokenizer_seconds": tok_summary.get("seconds"),
               "generators": cells, "protocol": args.protocol}
        if v2:
            row.update(decoder_ft_steps=ft_steps, kl_scale=kl_scale,
                       stage1={k: rec_stage1[k] for k in ("rfid", "psnr", "ssim")})
        rows.append(row)
        save_rows(Path(args.results), rows, meta)
        print(f"[ablation] {data} {row_name}: done in {time.perf_counter() - t_row:.0f} s "
              f"(rFID {rec['rfid']:.2f}, PSNR {rec['psnr']:.2f}, "
              + ", ".join(f"{g} FID {c['fid']:.2f}" for g, c in cells.items()) + ")", flush=True)
    print(f"[ablation] {len(rows)} rows in {time.perf_counter() - t0:.0f} s -> {args.results}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except StageMismatch as e:  # one line, nothing overwritten
        print(f"ablation.py: {e}", file=sys.stderr)
        raise SystemExit(2) from None
