"""DDT-AR: a class-conditional LLaMA over discrete DDT token ids.

DDT-LLaMA's recipe (arXiv 2504.14666) in miniature: the paper adds the DDT tokenizer's visual codes to a
LLaMA-3 vocabulary and trains plain next-token cross-entropy; here a small LLaMA (transformers'
`LlamaForCausalLM`, trained from scratch) has the vocabulary image codes + class tokens and is
class-conditional through one class token in front of the K image ids:

    vocabulary   ids [0, V) image codes; V + c the class token of class c, c in [0, num_classes);
                 V + num_classes the null class (classifier-free guidance; labels are dropped to it with
                 probability `label_dropout` in training)
    sequence     [class token, v_1, ..., v_K], v the ids in AR order (coarse first: reversed code order,
                 as `detok.tokenizers.DDT` gives them); max_positions = K + 1
    loss         cross-entropy over the whole vocabulary of the K image ids, teacher-forced
    sampling     one id per step with the KV cache, draws restricted to [0, V); CFG on the logits
                 against the null-class prompt (`detok.nn.llama.sample_tokens`)

`transformers` is an optional extra: this module imports without it and builds the LLaMA in `__init__`.

Axis letters: B batch, K image tokens, V codebook size, L = V + num_classes + 1 the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detok.config import from_dict, option
from detok.generators.base import LABEL_DROPOUT, Generator
from detok.nn.llama import build_llama, sample_tokens
from detok.registry import Family, Sampling, register, register_family


@dataclass
class DDTARConfig:
    """DDT-AR architecture and sampling defaults; the defaults are ddt_ar_mini (the CPU recipe's size)."""

    latent_shape: tuple[int] = option((512,), "(K,): image tokens per image, the DDT tokenizer's num_tokens")
    num_classes: int = option(1000, "classes; class token V + c, null class V + num_classes", min=1)
    codebook_size: int = option(0, "V, the DDT tokenizer's codebook size (required; set from the tokenizer)", min=0)
    width: int = option(128, "hidden size of the LLaMA", min=1)
    depth: int = option(4, "decoder layers", min=1)
    heads: int = option(4, "attention heads (as many key-value heads)", min=1)
    intermediate: int = option(0, "SwiGLU hidden size; 0 = int(8/3 * width) rounded up to a multiple of 8", min=0)
    label_dropout: float = option(LABEL_DROPOUT, "probability a label becomes the null class (CFG)", min=0, max=1)
    rope_theta: float = option(10000.0, "RoPE base (LLaMA-2's 10000)", min=1)
    temperature: float = option(1.0, "sampling temperature; 0 = greedy argmax", min=0)
    top_k: int = option(0, "keep the k most likely ids when sampling; 0 = off", min=0)
    top_p: float = option(1.0, "nucleus sampling mass; 1 = off", min=0, max=1)


class DDTAR(Generator):
    """LLaMA over [class token; K DDT ids in AR order]; `loss` on ids (B, K), `sample` -> ids (n, K)."""

    sampling = Sampling(steps="one token per step (K image tokens)", default_steps="K", fixed_steps=True)

    cfg: DDTARConfig

    def __init__(self, cfg: DDTARConfig) -> None:
        if len(cfg.latent_shape) != 1 or cfg.latent_shape[0] < 1:
            raise ValueError(f"ddt_ar models K discrete ids: latent_shape must be (K,), got {cfg.latent_shape}")
        if cfg.codebook_size <= 0:
            raise ValueError("ddt_ar needs codebook_size > 0 (V, the DDT tokenizer's codebook size)")
        super().__init__(cfg.latent_shape, cfg.num_classes, cfg.label_dropout)
        self.cfg = cfg
        self.num_tokens = cfg.latent_shape[0]  # K
        self.codebook_size = cfg.codebook_size  # V
        self.vocab_size = cfg.codebook_size + cfg.num_classes + 1  # L: codes, classes, null class
        self.lm = build_llama(self.vocab_size, cfg.width, cfg.depth, cfg.heads, cfg.intermediate,
                              max_positions=self.num_tokens + 1, rope_theta=cfg.rope_theta)

    def class_token(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels (B,) in [0, num_classes] (num_classes = null) -> their vocabulary ids V + label (B,)."""
        return labels.long() + self.codebook_size

    # -- checks -------------------------------------------------------------------------------------

    def check_ids(self, ids: torch.Tensor) -> None:
        """A ValueError naming the problem unless ids is integer (B, K) with values in [0, V)."""
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"ddt_ar models discrete token ids: expected an integer tensor, got {ids.dtype} "
                             f"(continuous latents need a continuous generator)")
        k = self.num_tokens
        if ids.ndim != 2 or ids.shape[1] != k:
            got = ids.shape[1] if ids.ndim == 2 else f"shape {tuple(ids.shape)}"
            raise ValueError(f"ddt_ar expects ids (B, K) with K = {k} (its latent_shape), got a wrong K: {got}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(f"token ids must lie in [0, {self.codebook_size}) (the codebook size V), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")

    def check_labels(self, labels: torch.Tensor, batch: int) -> None:
        """A ValueError unless labels is integer (batch,) in [0, num_classes] (num_classes = null class)."""
        if labels.is_floating_point() or labels.shape != (batch,):
            raise ValueError(f"labels must be integer ({batch},), got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")

    # -- Generator interface ------------------------------------------------------------------------

    def loss(
        self, latents: torch.Tensor, labels: torch.Tensor, rng: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Next-token cross-entropy of ids `latents` (B, K) long in AR order given labels (B,).

        Returns "loss" (= "ce", the mean over the B * K image ids) and "accuracy" (top-1 next-id, detached).
        """
        ids = latents
        self.check_ids(ids)
        labels = labels.to(ids.device)
        self.check_labels(labels, ids.shape[0])
        cls = self.class_token(self.drop_labels(labels, rng))  # (B,)
        seq = torch.cat([cls[:, None], ids.long()], dim=1)  # (B, K + 1)
        logits = self.lm(input_ids=seq[:, :-1], use_cache=False).logits  # (B, K, L): position i predicts v_(i+1)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), ids.flatten().long())  # (B * K, L) vs (B * K,)
        accuracy = (logits.argmax(dim=-1) == ids).float().mean().detach()
        return {"loss": ce, "ce": ce, "accuracy": accuracy}

    def _sample(
        self, n: int, labels: torch.Tensor | None, *, cfg_scale: float, steps: None,
        head_steps: None, rng: torch.Generator | None, progress: bool,
        temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
        use_kv_cache: bool = True,
    ) -> torch.Tensor:
        """Ids (n, K) long in AR order for labels (n,) (None: the null class), one id per step.

        cfg_scale != 1 guides the logits against the null-class prompt; temperature / top_k / top_p default
        (None) to the config's. Without the KV cache every step recomputes the prefix (the same ids).
        """
        device = self.lm.lm_head.weight.device
        null = torch.full((n,), self.null_label, dtype=torch.long, device=device)  # (n,)
        labels = null if labels is None else labels.to(device)
        self.check_labels(labels, n)
        cfg = self.cfg
        return sample_tokens(
            self.lm,
            self.class_token(labels)[:, None],  # (n, 1): the class-token prompt
            self.num_tokens,
            uncond_prompt=self.class_token(null)[:, None],  # (n, 1): the null-class prompt
            cfg_scale=cfg_scale,
            temperature=cfg.temperature if temperature is None else temperature,
            top_k=cfg.top_k if top_k is None else top_k,
            top_p=cfg.top_p if top_p is None else top_p,
            vocab_range=(0, self.codebook_size),  # only image codes are drawn
            rng=rng,
            use_cache=use_kv_cache,
            progress=progress,
        )  # (n, K)


# ---------------------------------------------------------------------------------------------------
# Presets and registration
# ---------------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    "ddt_ar_tiny": {"width": 64, "depth": 2, "heads": 2},  # tests
    "ddt_ar_mini": {"width": 128, "depth": 4, "heads": 4},  # the CPU recipe
    "ddt_ar_s": {"width": 384, "depth": 12, "heads": 6},
    "ddt_ar_b": {"width": 768, "depth": 12, "heads": 12},
}


def ddt_ar_config(name: str, latent_shape: tuple[int] = (512,), num_classes: int = 1000, **overrides) -> DDTARConfig:
    """The DDTARConfig of a preset with overrides (codebook_size among them; no model built)."""
    if name not in PRESETS:
        raise KeyError(f"unknown ddt_ar preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    fields = {"latent_shape": tuple(latent_shape), "num_classes": num_classes, **PRESETS[name], **overrides}
    return from_dict(DDTARConfig, fields)  # type-checked; unknown keys are ConfigErrors


register_family(Family(
    "generator", "ddt_ar", "DDT-AR: class-conditional LLaMA over discrete DDT token ids (coarse first), CFG on "
    "the logits", recipe="quickstart_ddt_ar", sampling=DDTAR.sampling, paper="arXiv 2504.14666",
    config=DDTARConfig, extra={"tokens": "discrete"},
))


def _register(name: str) -> None:
    def build(latent_shape: tuple[int] = (512,), num_classes: int = 1000, **overrides) -> DDTAR:
        return DDTAR(ddt_ar_config(name, latent_shape, num_classes, **overrides))

    build.__doc__ = f"Build {name} over K = latent_shape[0] ids of a codebook_size-code DDT tokenizer."
    register("generator", name, family="ddt_ar")(build)


for _name in PRESETS:
    _register(_name)
