"""Frozen perceptual nets: LPIPS on VGG16 (relu1_2..relu5_3) and the ConvNeXt-S logit-matching loss.

Both take images in [-1, 1], the range detok's data pipeline produces. Upstream l-DeTok maps images to
[0, 1] and then calls its LPIPS with `x * 2 - 1` (TiTok's LPIPS rescales [0, 1] -> [-1, 1] internally),
so LPIPS sees [-1, 1] exactly as the original LPIPS was trained; the ConvNeXt branch maps to [0, 1] and
applies ImageNet mean/std. Pretrained weights load from local files only (see `weights.py`); with
`pretrained=False` the same architectures are randomly initialised (tests, CPU smoke runs).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detok.io import read_tensors
from detok.losses.weights import find_weights, package_file

VGG16_FILE = "vgg16-397923af.pth"  # torchvision VGG16_Weights.IMAGENET1K_V1
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LPIPS_HEADS_FILE = "vgg.pth"  # LPIPS v0.1 linear heads; identical to taming's vgg.pth
LPIPS_HEADS_MD5 = "d507d7349b931f0638a25a48a722f98a"
CONVNEXT_FILE = "convnext_small-0c510722.pth"  # torchvision ConvNeXt_Small_Weights.IMAGENET1K_V1
CONVNEXT_URL = "https://download.pytorch.org/models/convnext_small-0c510722.pth"

# LPIPS ScalingLayer: maps [-1, 1] input to roughly ImageNet-normalised values
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision vgg16 `features` up to relu5_3 (the final max-pool is not needed); "M" is a 2x2 max-pool
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`
VGG16_TAP_CHANNELS = (64, 128, 256, 512, 512)
RANDOM_HEAD_WEIGHT = 0.1  # random-init LPIPS heads: constant, non-negative, about the size of trained ones
NORM_EPS = 1e-10  # LPIPS channel unit-normalisation epsilon


class FrozenNet(nn.Module):
    """Base for frozen nets: parameters never need grad and the module stays in eval mode."""

    def freeze(self) -> None:
        """Turn off grads and switch to eval mode."""
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenNet:
        """Ignore `mode`: a frozen net is always in eval mode, even when its parent is put in train()."""
        return super().train(False)


def _meta_if(flag: bool) -> contextlib.AbstractContextManager:
    """Build on the meta device (no init cost, no RNG use) when weights are loaded right after."""
    return torch.device("meta") if flag else contextlib.nullcontext()


def _load_file(path: Path) -> dict[str, Tensor]:
    """Read a state dict of tensors from a .pth file on the CPU."""
    state = read_tensors(path, "weights file")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def vgg16_features() -> nn.Sequential:
    """The torchvision VGG16 `features` stack up to relu5_3 (same layer indices, so same state-dict keys)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = int(v)
    return nn.Sequential(*layers)


def vgg16_features_state(path: Path) -> dict[str, Tensor]:
    """VGG16 conv weights from a torchvision vgg16 state dict (`features.*`) or a bare `features` one."""
    state = _load_file(path)
    if any(k.startswith("features.") for k in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    return state


_HEAD_KEY = re.compile(r"^(?:lin|lins\.|heads\.)([0-4])\.(?:model\.\d+\.)?weight$")


def lpips_heads_state(path: Path) -> list[Tensor]:
    """Five LPIPS heads (1, C, 1, 1) from `lin{i}.model.1.weight` (lpips, taming) or `heads.{i}.weight`."""
    found: dict[int, Tensor] = {}
    for key, value in _load_file(path).items():
        m = _HEAD_KEY.match(key)
        if m:
            found[int(m.group(1))] = value
    heads = []
    for i, ch in enumerate(VGG16_TAP_CHANNELS):
        if i not in found:
            raise ValueError(f"{path}: no LPIPS head {i} (expected key lin{i}.model.1.weight)")
        if tuple(found[i].shape) != (1, ch, 1, 1):
            raise ValueError(
                f"{path}: LPIPS head {i} has shape {tuple(found[i].shape)}, expected (1, {ch}, 1, 1)"
            )
        heads.append(found[i].float())
    return heads


def find_lpips_heads(explicit: str = "") -> Path:
    """LPIPS head file: explicit path, else a search folder, else the copy in an installed `lpips` package."""
    try:
        return find_weights(
            LPIPS_HEADS_FILE,
            explicit,
            what="LPIPS VGG16 linear heads (v0.1)",
            key="lpips_path",
            source=f"the `lpips` PyPI wheel as lpips/weights/v0.1/vgg.pth (md5 {LPIPS_HEADS_MD5})",
        )
    except FileNotFoundError:
        shipped = None if explicit else package_file("lpips", "weights", "v0.1", LPIPS_HEADS_FILE)
        if shipped is None:
            raise
        return shipped


def unit_normalize(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Divide each spatial feature vector by its L2 norm over channels."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(FrozenNet):
    """LPIPS distance with a VGG16 backbone and v0.1 linear heads; inputs (B, 3, H, W) in [-1, 1]."""

    def __init__(
        self,
        pretrained: bool = True,
        vgg_path: str = "",
        heads_path: str = "",
        rng: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if pretrained:  # locate both files before building anything, so a missing file fails fast
            vgg_file = find_weights(
                VGG16_FILE,
                vgg_path,
                what="VGG16 ImageNet weights (LPIPS backbone)",
                key="vgg_path",
                source=VGG16_URL,
            )
            heads_file = find_lpips_heads(heads_path)
        with _meta_if(pretrained):
            self.features = vgg16_features()
            self.heads = nn.ModuleList(
                nn.Conv2d(ch, 1, kernel_size=1, bias=False) for ch in VGG16_TAP_CHANNELS
            )
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.features.load_state_dict(vgg16_features_state(vgg_file), strict=True, assign=True)
            heads = {f"{i}.weight": w for i, w in enumerate(lpips_heads_state(heads_file))}
            self.heads.load_state_dict(heads, strict=True, assign=True)
        else:
            self.reset_parameters(rng)
        self.freeze()

    @torch.no_grad()
    def reset_parameters(self, rng: torch.Generator | None = None) -> None:
        """Random init: torchvision's VGG init (Kaiming normal, fan_out) and constant non-negative heads."""
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=rng)
                nn.init.zeros_(m.bias)
        for head in self.heads:
            nn.init.constant_(head.weight, RANDOM_HEAD_WEIGHT)

    def taps(self, x: Tensor) -> list[Tensor]:
        """VGG16 activations relu1_2..relu5_3 of already-scaled input."""
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                out.append(x)
        return out

    def forward(self, x: Tensor, y: Tensor, reduction: str = "none") -> Tensor:
        """Distance between x and y in [-1, 1]: per sample (B,) for reduction="none", scalar for "mean"."""
        fx = self.taps((x - self.shift) / self.scale)
        fy = self.taps((y - self.shift) / self.scale)
        dist = x.new_zeros(x.shape[0])
        for head, a, b in zip(self.heads, fx, fy):
            diff = (unit_normalize(a) - unit_normalize(b)).pow(2)  # (B, C, h, w)
            dist = dist + head(diff).mean(dim=(1, 2, 3))  # (B,)
        if reduction == "mean":
            return dist.mean()
        if reduction != "none":
            raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
        return dist


class ConvNeXtLogitLoss(FrozenNet):
    """MSE between ConvNeXt-S ImageNet logits (1000-d) of target and prediction, both in [-1, 1]."""

    def __init__(self, pretrained: bool = True, weights_path: str = "", size: int = 224) -> None:
        super().__init__()
        if pretrained:
            weights_file = find_weights(
                CONVNEXT_FILE,
                weights_path,
                what="ConvNeXt-S ImageNet weights (perceptual loss)",
                key="convnext_path",
                source=CONVNEXT_URL,
            )
        with _meta_if(pretrained):
            import torchvision  # here, not at import: it pulls in torch._dynamo (about 1 s per CLI start)

            self.net = torchvision.models.convnext_small(weights=None)
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if pretrained:
            self.net.load_state_dict(_load_file(weights_file), strict=True, assign=True)
        self.freeze()

    def logits(self, images: Tensor) -> Tensor:
        """ImageNet logits (B, 1000) of images in [-1, 1]: to [0, 1], resize (antialiased), normalise."""
        x = images * 0.5 + 0.5
        x = F.interpolate(
            x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        return self.net((x - self.mean) / self.std)

    def forward(self, target: Tensor, pred: Tensor) -> Tensor:
        """Scalar MSE between logits; the target branch runs without grad."""
        with torch.no_grad():
            target_logits = self.logits(target)
        return F.mse_loss(self.logits(pred), target_logits)
