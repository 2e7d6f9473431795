"""`detok convert` defects: upstream stats.pkl, attention heads invisible in the weights, non-preset MARs.

Every conversion goes through the real CLI (`detok.cli.main.main`); source models are detok models written
in upstream's key layout (the renames of detok.tokenizers.upstream inverted; MAR keys are upstream's), so
a converted model must reproduce the source model's outputs exactly.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from detok.cli.main import main
from detok.generators.load import load_generator
from detok.generators.mar import MAR, mar_config
from detok.generators.upstream_mar import released_heads as mar_released_heads
from detok.runs.convert import read_stats
from detok.tokenizers.detok import DeTok, DetokConfig, detok_config
from detok.tokenizers.load import load_tokenizer
from detok.tokenizers.upstream import released_heads

STATS_KEY = "detok-BB-gamm3.0-m0.7"  # the key of the released stats.pkl
HAS_HEAD_FIELDS = {"encoder_heads", "decoder_heads"} <= {f.name for f in dataclasses.fields(DetokConfig)}


# -- helpers -----------------------------------------------------------------------------------------


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its (partly zero / one) init so that every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=g))


def _tiny_detok(enc_heads: int = 2, dec_heads: int = 2, seed: int = 0) -> DeTok:
    """A detok_tiny (width 64, depth 2) in the upstream RoPE layout with the given attention heads.

    Stands in for an upstream model trained with those heads. The heads are set on the built modules
    (what DetokConfig would say is exactly what these attributes hold), so this source model does not
    depend on the converter or on how the config spells heads.
    """
    model = DeTok(detok_config("detok_tiny", rope_layout="upstream"))
    for part, heads in ((model.encoder, enc_heads), (model.decoder, dec_heads)):
        part.heads = heads
        for block in part.blocks:
            block.attn.heads = heads
        part.set_rope_layout("upstream")  # RoPE tables are per head dim
    _perturb(model, seed)
    return model.eval()


def _upstream_tokenizer_state(model: DeTok) -> dict[str, torch.Tensor]:
    """detok's tokenizer state dict in the released key layout (upstream.convert_state_dict, inverted)."""
    out = {}
    for key, value in model.state_dict().items():
        if key in ("latent_mean", "latent_std"):  # upstream keeps statistics outside the checkpoint
            continue
        key = re.sub(r"^(encoder|decoder)\.blocks\.(\d+)\.", r"\1.transformer.\2.", key)
        key = re.sub(r"^encoder\.patch_embed\.", "encoder.patch_embed.0.", key)
        if key.startswith("decoder.to_pixels."):
            key = key.replace("decoder.to_pixels.", "decoder.ffn.1.")
            if key.endswith(".weight"):
                value = value[:, :, None, None]  # (O, D) -> (O, D, 1, 1): upstream's 1x1 conv
        out[key] = value.clone()
    return out


def _save_upstream(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A released-layout tokenizer file: `model` and `model_ema` (parameters only: every key left, since the
    tokenizer's only buffers are the statistics, which upstream keeps elsewhere)."""
    torch.save({"model": state, "model_ema": dict(state)}, path)
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _one_error_line(err: str) -> str:
    """The CLI's error line; asserts it is the only message (besides the DETOK_DEBUG hint)."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("(set DETOK_DEBUG")]
    assert len(lines) == 1, err
    assert lines[0].startswith("detok convert: error: "), err
    return lines[0]


@pytest.fixture
def tiny_upstream_tokenizer(tmp_path) -> tuple[DeTok, Path]:
    model = _tiny_detok()
    return model, _save_upstream(_upstream_tokenizer_state(model), tmp_path / "upstream_tok.pth")


def _upstream_stats(channels: int = 16) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """upstream's stats.pkl content: {key: {"single": (mean, std), "channel": (mean[2C], std[2C])}}."""
    mean = torch.linspace(-3.0, 3.0, 2 * channels)  # first C: posterior means; last C: log-variances
    std = torch.linspace(0.5, 4.0, 2 * channels)
    entry = {"single": (mean.mean(), std.mean()), "channel": (mean, std)}
    return {STATS_KEY: entry}, mean[:channels], std[:channels]


# -- defect 1: upstream stats.pkl ---------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_convert_reads_upstream_stats_pkl(tiny_upstream_tokenizer, tmp_path, capsys, writer):
    """Upstream caches its statistics in `stats.pkl`; its writer (utils/train_utils.py) is not in our index,
    and the reference describes the file as a pickle: `pickle.dump` of torch tensors is the likely writer,
    `torch.save` is the other one a torch user would reach for, so both must read."""
    _, src = tiny_upstream_tokenizer
    content, mean, std = _upstream_stats()
    path = tmp_path / "stats.pkl"
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(content, f)
    else:
        torch.save(content, path)
    out = tmp_path / "converted"
    rc, err = _run(["convert", str(src), str(out), "--heads", "2", "--stats", str(path)], capsys)
    assert rc == 0, err  # one entry: no --stats-key needed
    tok = load_tokenizer(out)
    torch.testing.assert_close(tok.latent_mean, mean, rtol=0, atol=0)  # the first C "channel" entries
    torch.testing.assert_close(tok.latent_std, std, rtol=0, atol=0)
    out2 = tmp_path / "converted2"
    assert main(["convert", str(src), str(out2), "--heads", "2", "--stats", str(path), "--stats-key", STATS_KEY]) == 0
    torch.testing.assert_close(load_tokenizer(out2).latent_mean, mean, rtol=0, atol=0)


def test_stats_pkl_of_gpu_tensors_reads_on_cpu(tmp_path):
    """Upstream computes its statistics on GPUs: pickled CUDA tensors must load on a CPU-only machine.

    The stream is what `pickle.dump` writes for a CUDA tensor (a storage saved with location "cuda:0"
    inside `_rebuild_tensor_v2`), built here by hand because the test machine has no GPU.
    """

    class _Storage:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __reduce__(self):
            return torch.storage._load_from_bytes, (self.data,)

    class _CudaTensor:
        def __init__(self, t: torch.Tensor) -> None:
            buf = io.BytesIO()
            with warnings.catch_warnings():  # TypedStorage is deprecated, and what upstream's pickles hold
                warnings.simplefilter("ignore", UserWarning)
                torch.save(t.storage(), buf, _use_new_zipfile_serialization=False)
            self.data = buf.getvalue().replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            self.shape, self.stride = tuple(t.shape), t.stride()

        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (_Storage(self.data), 0, self.shape, self.stride, False,
                                                     OrderedDict())

    content, mean, std = _upstream_stats()
    entry = content[STATS_KEY]
    entry["channel"] = tuple(_CudaTensor(t) for t in entry["channel"])
    entry["single"] = tuple(_CudaTensor(t.reshape(1)) for t in entry["single"])
    path = tmp_path / "stats.pkl"
    path.write_bytes(pickle.dumps(content))
    got_mean, got_std = read_stats(path, channels=16)
    torch.testing.assert_close(got_mean, mean, rtol=0, atol=0)
    torch.testing.assert_close(got_std, std, rtol=0, atol=0)


def test_stats_key_errors_list_the_entries(tiny_upstream_tokenizer, tmp_path, capsys):
    _, src = tiny_upstream_tokenizer
    content, _, _ = _upstream_stats()
    content["detok-BB-decoder-ft"] = content[STATS_KEY]
    path = tmp_path / "stats.pkl"
    path.write_bytes(pickle.dumps(content))
    base = ["convert", str(src), str(tmp_path / "out"), "--heads", "2", "--stats", str(path)]
    rc, err = _run(base, capsys)  # several entries, none chosen
    line = _one_error_line(err)
    assert rc == 2 and "--stats-key" in line and STATS_KEY in line and "detok-BB-decoder-ft" in line
    rc, err = _run([*base, "--stats-key", "nope"], capsys)  # a missing entry
    line = _one_error_line(err)
    assert rc == 2 and "'nope'" in line and STATS_KEY in line and "detok-BB-decoder-ft" in line
    assert not (tmp_path / "out").exists()


class _CreatesFile:
    """A pickle payload that creates a file when unpickled by a trusting loader."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


class _HidesInStorageBytes:
    """The payload hidden where tensor bytes go: torch's own `_load_from_bytes` would unpickle it freely."""

    def __init__(self, target: Path) -> None:
        self.data = pickle.dumps(_CreatesFile(target), protocol=2)  # the protocol of torch's storage bytes

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.data,)


@pytest.mark.parametrize("payload", [_CreatesFile, _HidesInStorageBytes])
def test_malicious_stats_pickle_is_refused(tiny_upstream_tokenizer, tmp_path, capsys, payload):
    _, src = tiny_upstream_tokenizer
    target = tmp_path / "pwned"
    path = tmp_path / "stats.pkl"
    path.write_bytes(pickle.dumps({STATS_KEY: {"channel": (payload(target), torch.ones(32))}}))
    out = tmp_path / "out"
    rc, err = _run(["convert", str(src), str(out), "--heads", "2", "--stats", str(path)], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "not a safe statistics file" in line and str(path) in line
    assert "open" in line  # names what was refused
    assert not target.exists() and not out.exists()
    with pytest.raises(ValueError, match="not a safe statistics file"):
        read_stats(path)
    assert not target.exists()


def test_plain_stats_formats_still_read(tmp_path):
    import json

    import numpy as np

    mean, std = torch.arange(32.0), torch.full((32,), 2.0)
    (tmp_path / "s.json").write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist()}))
    np.savez(tmp_path / "s.npz", mean=mean.numpy(), std=std.numpy())
    torch.save({"mean": mean, "std": std}, tmp_path / "s.pt")
    for name in ("s.json", "s.npz", "s.pt"):
        got = read_stats(tmp_path / name, channels=16)
        torch.testing.assert_close(got[0], mean[:16], rtol=0, atol=0)
        torch.testing.assert_close(got[1], std[:16], rtol=0, atol=0)


# -- defect 2: attention heads are invisible in the weights -------------------------------------------


def test_tokenizer_with_unknown_heads_needs_the_flag(tmp_path, capsys):
    """Width 64, depth 2 is no size upstream's code builds: 2 or 4 heads give the same shapes."""
    model = _tiny_detok(4, 4)
    src = _save_upstream(_upstream_tokenizer_state(model), tmp_path / "tok4.pth")
    rc, err = _run(["convert", str(src), str(tmp_path / "out")], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "--heads" in line
    assert not (tmp_path / "out").exists()


def _shape_only_tokenizer_state(width: int, depth: int) -> dict[str, torch.Tensor]:
    """The tensors whose shapes name an upstream tokenizer's size (others are irrelevant to the size)."""
    state = {"encoder.patch_embed.0.weight": torch.empty(width, 3, 1, 1),
             "decoder.positional_embedding": torch.empty(1, 1, width)}
    for part in ("encoder", "decoder"):
        state.update({f"{part}.transformer.{i}.norm1.weight": torch.empty(0) for i in range(depth)})
    return state


def test_released_sizes_know_their_heads():
    """The paper's sizes convert without --heads; detok's own CPU sizes do not (upstream never built them)."""
    assert released_heads(_shape_only_tokenizer_state(768, 12)) == (12, 12)  # detok_BB, the release
    assert released_heads(_shape_only_tokenizer_state(1024, 24)) == (16, 16)
    assert released_heads(_shape_only_tokenizer_state(64, 2)) is None
    mar = {"fake_latent": torch.empty(1, 768)}
    mar.update({f"{p}_blocks.{i}.norm1.weight": torch.empty(0) for p in ("encoder", "decoder") for i in range(12)})
    assert mar_released_heads(mar) == 12  # MAR-B
    mar["fake_latent"] = torch.empty(1, 64)
    assert mar_released_heads(mar) is None


@pytest.mark.skipif(not HAS_HEAD_FIELDS, reason="DetokConfig has no encoder_heads / decoder_heads fields yet "
                    "(detok.tokenizers.detok, outside this change): a converted tokenizer cannot record its heads")
def test_tokenizer_with_nonpreset_heads_round_trips(tmp_path, capsys):
    model = _tiny_detok(4, 8)  # encoder and decoder heads differ: --heads E,D
    src = _save_upstream(_upstream_tokenizer_state(model), tmp_path / "tok.pth")
    out = tmp_path / "out"
    rc, err = _run(["convert", str(src), str(out), "--heads", "4,8"], capsys)
    assert rc == 0, err
    tok = load_tokenizer(out)
    assert (tok.encoder.heads, tok.decoder.heads) == (4, 8)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        moments = model.encode_moments(x)
        torch.testing.assert_close(tok.encode_moments(x), moments, rtol=1e-6, atol=1e-6)
        z = moments[:, :16]
        torch.testing.assert_close(tok.decode(z), model.decode(z), rtol=1e-6, atol=1e-6)


def _tiny_mar(seed: int = 0, **overrides) -> MAR:
    model = MAR(mar_config("mar_tiny", overrides.pop("latent_shape", (16, 4, 4)), 10, **overrides))
    _perturb(model, seed)
    return model.eval()


def _save_mar(model: MAR, path: Path) -> Path:
    """detok's MAR keys are upstream's: the state dict is the released layout."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model": state, "model_ema": {n: state[n] for n, _ in model.named_parameters()}}, path)
    return path


def _mar_outputs(model: MAR) -> tuple[torch.Tensor, torch.Tensor]:
    """(MAE decoder output, diffusion-head MLP output) on fixed inputs, eval mode."""
    g = torch.Generator().manual_seed(2)
    n, t = model.seq_len, model.token_dim
    tokens = torch.randn(2, n, t, generator=g)
    mask = torch.zeros(2, n)
    mask[:, : n // 2] = 1
    labels = torch.tensor([3, 10])  # 10 = the null class (fake_latent)
    x_t, c = torch.randn(5, t, generator=g), torch.randn(5, model.cfg.width, generator=g)
    steps = torch.tensor([0, 10, 100, 500, 999])
    with torch.no_grad():
        return model(tokens, mask, labels), model.diffloss.net(x_t, steps, c)


def test_mar_with_nonpreset_heads_needs_the_flag_then_round_trips(tmp_path, capsys):
    model = _tiny_mar(heads=4)  # width 64 as mar_tiny, but 4 heads: same shapes
    src = _save_mar(model, tmp_path / "mar4.pth")
    rc, err = _run(["convert", str(src), str(tmp_path / "no_heads")], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "--heads" in line
    assert not (tmp_path / "no_heads").exists()
    out = tmp_path / "mar"
    rc, err = _run(["convert", str(src), str(out), "--heads", "4"], capsys)
    assert rc == 0, err
    gen, _ = load_generator(out)
    assert gen.cfg.heads == 4
    for got, want in zip(_mar_outputs(gen), _mar_outputs(model)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    rc, err = _run(["convert", str(src), str(tmp_path / "two"), "--heads", "4,4"], capsys)
    assert rc == 2 and "one number" in _one_error_line(err)


# -- defect 3: a MAR of a width with no preset, on 32-channel latents ---------------------------------


def test_nonpreset_mar_on_32_channels_round_trips(tmp_path, capsys):
    model = _tiny_mar(seed=3, latent_shape=(32, 4, 4), width=96, heads=4)
    src = _save_mar(model, tmp_path / "mar96.pth")
    rc, err = _run(["convert", str(src), str(tmp_path / "no_channels"), "--heads", "4"], capsys)
    line = _one_error_line(err)
    assert rc == 2 and "--latent-channels" in line  # 32 = 32 channels x patch 1, or 8 x patch 2
    out = tmp_path / "mar"
    rc, err = _run(["convert", str(src), str(out), "--heads", "4", "--latent-channels", "32"], capsys)
    assert rc == 0, err
    gen, cfg = load_generator(out)
    assert gen.cfg == model.cfg  # the saved config rebuilds the architecture exactly
    assert cfg["latent_shape"] == [32, 4, 4]
    for got, want in zip(_mar_outputs(gen), _mar_outputs(model)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
