"""Generation probe: while a tokenizer trains, periodically train a small generator on its current latents.

Reconstruction converges early and says little about generation (the point of l-DeTok, and a question
users of peer repos ask: "how do I estimate gFID during VAE training?"). Every `every_epochs`, the probe
takes the tokenizer's EMA weights, computes their latent statistics, encodes `images` training images,
trains the `generator` recipe for `steps` steps on them and logs the FID of `n_samples` samples (domain
features for small data) to metrics.jsonl as `probe_fid`, `probe_class_accuracy`.

Every rank runs the probe (its generator trains with DDP like any run); the tokenizer's training state is
untouched: the global RNG is restored afterwards and the tokenizer's own generator is not used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch.utils.data import Subset

from detok import dist
from detok.data import collate
from detok.data.build import DataConfig
from detok.engine.trainer import Hook
from detok.runs.config import ProbeConfig


class GenerationProbe(Hook):
    """Trainer hook logging a generation-FID estimate of the live tokenizer every `every` steps."""

    def __init__(self, cfg: ProbeConfig, data_cfg: DataConfig, train_set, run_dir: Path, every: int,
                 stats_of: str = "mean") -> None:
        self.cfg, self.data_cfg, self.train_set, self.stats_of = cfg, data_cfg, train_set, stats_of
        self.run_dir, self.every = Path(run_dir), every

    def on_step(self, trainer, step: int) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            return self._probe(trainer, step)

    def _probe(self, trainer, step: int) -> dict[str, float]:
        from detok.eval.protocol import EvalConfig, feature_net_for, reference_for, score_generator
        from detok.runs.config import generator_config
        from detok.runs.train import train_generator
        from detok.tokenizers.latents import latent_stats, write_cache

        cfg, info = self.cfg, trainer.info
        out = self.run_dir / "probe" / f"step-{step:07d}"
        tok = trainer.ema_copy().to(trainer.device).eval()
        subset = Subset(self.train_set, range(min(cfg.images, len(self.train_set))))
        mean, std = latent_stats(tok, subset, trainer.device, collate=collate, progress=False, of=self.stats_of)
        tok.set_stats(mean.to(trainer.device), std.to(trainer.device))
        write_cache(tok, subset, out / "latents", trainer.device, collate=collate, progress=False, batch_size=256,
                    source={"tokenizer": f"{self.run_dir} (EMA at step {step})", "data": self.data_cfg.name})
        dist.barrier()
        g_cfg = generator_config(family=cfg.generator, overrides=[
            f"tokenizer={self.run_dir}", f"cache={out / 'latents'}", f"train.out_dir={out / cfg.generator}",
            f"train.max_steps={cfg.steps}", "train.progress=false", "sample.per_class=0",
            f"train.ckpt_every={10 * cfg.steps}",
        ])
        # a probe on few images: no batch larger than its latents (a multiple of the process count)
        fit = len(subset) // info.world * info.world
        g_cfg.train.global_batch_size = max(info.world, min(g_cfg.train.global_batch_size, fit))
        res = train_generator(g_cfg, tokenizer=tok)
        from detok.generators.load import load_generator

        gen, _ = load_generator(out / cfg.generator)
        gen.to(trainer.device)
        scale = cfg.cfg_scale or g_cfg.sample.cfg_scale
        ecfg = EvalConfig(cfg_scales=[scale], n_search=cfg.n_samples, n_final=cfg.n_samples, final_cfg1=False,
                          precision_recall=False, batch_size=min(128, cfg.n_samples))  # blocks are drawn whole
        net = feature_net_for(cfg.feature_net, self.data_cfg, device=trainer.device)
        ref = reference_for(net, self.data_cfg, progress=False)
        scores = score_generator(gen, tok, net, ref, ecfg, progress=False)["best"]
        values = {"probe_fid": scores["fid"], "probe_gen_loss": float(res["final"].get("loss", float("nan")))}
        if "class_accuracy" in scores:
            values["probe_class_accuracy"] = scores["class_accuracy"]
        dist.barrier()
        if info.is_main and not cfg.keep:
            shutil.rmtree(out, ignore_errors=True)
        return values
