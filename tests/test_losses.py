"""CPU tests of the loss package: hinge formulas, LPIPS / ConvNeXt invariants, the exact l-DeTok loss formula,
gradient routing, weight-file lookup and loading, and what goes into the checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from detok.losses import (
    LPIPS,
    ConvNeXtLogitLoss,
    PatchDiscriminator,
    TokenizerLoss,
    TokenizerLossConfig,
    find_lpips_heads,
    find_weights,
    hinge_d_loss,
    hinge_g_loss,
    search_dirs,
)
from detok.losses.perceptual import CONVNEXT_FILE, LPIPS_HEADS_FILE, VGG16_FILE, VGG16_TAPS

SIZE = 32


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """Random images in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g) * 2 - 1


@pytest.fixture
def no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every weight search folder into an empty temp dir and hide any installed lpips package."""
    monkeypatch.setenv("DETOK_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("detok.losses.perceptual.package_file", lambda *a: None)
    return tmp_path


@pytest.fixture(scope="module")
def full_loss() -> TokenizerLoss:
    """Random-init loss with every part on and non-default weights, so each weight shows in the total."""
    torch.manual_seed(0)
    cfg = TokenizerLossConfig(
        recon_weight=2.0,
        kl_weight=0.5,
        perceptual_weight=0.7,
        lpips_weight=1.0,
        convnext_weight=0.1,
        perceptual_pretrained=False,
        disc_weight=0.3,
    )
    loss = TokenizerLoss(cfg)
    assert loss.convnext is not None and loss.convnext.size == 224  # upstream resize
    loss.convnext.size = SIZE  # keep the CPU test fast: 224 px ConvNeXt-S passes cost seconds each
    return loss


def small_loss(**kw: object) -> TokenizerLoss:
    """Random-init loss without perceptual nets (cheap)."""
    return TokenizerLoss(TokenizerLossConfig(perceptual_weight=0.0, perceptual_pretrained=False, **kw))


# ---- hinge losses and discriminator -----------------------------------------------------------------


def test_hinge_losses_hand_computed() -> None:
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - real) = [0, 0.5, 2] -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + fake) = [0, 1, 2] -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -1.0)).item() == 0.0


def test_patch_discriminator_shapes_and_init() -> None:
    d = PatchDiscriminator(rng=torch.Generator().manual_seed(0))
    same = PatchDiscriminator(rng=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), same.state_dict().values()))
    assert d(images(2)).shape == (2, 1, 2, 2)
    assert d.output_size(256) == 30 and d.output_size(SIZE) == 2 and d.min_input_size() == 24
    assert d(torch.zeros(1, 3, 24, 24)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 24 px"):
        d(torch.zeros(1, 3, 16, 16))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and [c.kernel_size[0] for c in convs] == [4] * 5
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1] and len(bns) == 3
    assert abs(convs[3].weight.std().item() - 0.02) < 2e-3
    assert all(b.bias.abs().max() == 0 for b in bns) and abs(bns[2].weight.mean().item() - 1) < 5e-3


# ---- perceptual nets ----------------------------------------------------------------------------------


def test_lpips_identity_symmetry_positive(full_loss: TokenizerLoss) -> None:
    lp = full_loss.lpips
    assert lp is not None
    x, y = images(2, 0), images(2, 1)
    with torch.no_grad():
        assert torch.equal(lp(x, x), torch.zeros(2))
        dxy, dyx = lp(x, y), lp(y, x)
    assert dxy.shape == (2,) and (dxy > 0).all()
    torch.testing.assert_close(dxy, dyx)
    assert lp(x, y, reduction="mean").item() == pytest.approx(dxy.mean().item(), rel=1e-6)


def test_convnext_term_zero_for_identical(full_loss: TokenizerLoss) -> None:
    cn = full_loss.convnext
    assert cn is not None
    x, y = images(1, 0), images(1, 1)
    with torch.no_grad():
        assert cn(x, x).item() == 0.0
        assert cn(x, y).item() > 0.0
        assert cn.logits(x).shape == (1, 1000)


def test_perceptual_nets_frozen_and_always_eval(full_loss: TokenizerLoss) -> None:
    full_loss.train()
    assert full_loss.discriminator.training
    for net in (full_loss.lpips, full_loss.convnext):
        assert net is not None and not net.training
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
    trainable = {n for n, p in full_loss.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("discriminator.") for n in trainable)


# ---- the combined loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("gan_active", [True, False])
def test_generator_loss_is_exact_weighted_sum(full_loss: TokenizerLoss, gan_active: bool) -> None:
    cfg = full_loss.cfg
    x = images(2, 0)
    xr = (x + 0.2 * images(2, 1)).clamp(-1, 1)
    kl = torch.tensor(3.0)
    out = full_loss.generator_loss(x, xr, kl, gan_active=gan_active)
    assert set(out) == {"loss", "recon", "perceptual", "kl", "gan", "psnr"}
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in out.values())
    mse = ((xr * 0.5 + 0.5) - (x * 0.5 + 0.5)).pow(2).mean()
    assert out["recon"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["psnr"].item() == pytest.approx(-10 * math.log10(mse.item()), rel=1e-6)
    assert out["kl"].item() == 3.0
    with torch.no_grad():
        lp = full_loss.lpips(x, xr).mean()
        cn = full_loss.convnext(x, xr)
    assert out["perceptual"].item() == pytest.approx(((1.0 * lp + 0.1 * cn) / 1.1).item(), rel=1e-5)
    if gan_active:
        assert out["gan"].item() != 0.0
        with torch.no_grad():
            assert out["gan"].item() == pytest.approx(-full_loss.discriminator(xr).mean().item(), rel=1e-5)
    else:
        assert out["gan"].item() == 0.0
    expected = (
        cfg.recon_weight * out["recon"]
        + cfg.perceptual_weight * out["perceptual"]
        + cfg.kl_weight * out["kl"]
        + (cfg.disc_weight * out["gan"] if gan_active else 0.0)
    )
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_perceptual_weight_zero_builds_no_nets() -> None:
    loss = small_loss(recon="l1", recon_weight=1.5)
    assert loss.lpips is None and loss.convnext is None
    assert all(n.startswith("discriminator.") for n, _ in loss.named_parameters())
    x, xr = images(2, 0), images(2, 1)
    out = loss.generator_loss(x, xr, 2.0, gan_active=False)
    l1 = ((xr - x) * 0.5).abs().mean()
    assert out["perceptual"].item() == 0.0 and out["recon"].item() == pytest.approx(l1.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(1.5 * l1.item() + 1e-6 * 2.0, rel=1e-6)


def test_recon_l2_plus_l1_and_bad_config() -> None:
    x, xr = images(2, 0), images(2, 1)
    out = small_loss(recon="l2+l1").generator_loss(x, xr, 0.0, gan_active=False)
    d = (xr - x) * 0.5
    assert out["recon"].item() == pytest.approx(0.5 * (d.pow(2).mean() + d.abs().mean()).item(), rel=1e-6)
    with pytest.raises(ValueError, match="recon"):
        small_loss(recon="l3")
    with pytest.raises(ValueError, match="lpips_weight"):
        TokenizerLoss(TokenizerLossConfig(lpips_weight=0.0, convnext_weight=0.0, perceptual_pretrained=False))


def test_generator_loss_grads_reach_recon_not_discriminator() -> None:
    torch.manual_seed(0)
    loss = small_loss()
    source = nn.Parameter(images(2, 1))
    out = loss.generator_loss(images(2, 0), torch.tanh(source), torch.tensor(0.0), gan_active=True)
    out["loss"].backward()
    assert source.grad is not None and source.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.discriminator.parameters())
    assert all(p.requires_grad for p in loss.discriminator.parameters())


def test_discriminator_loss_grads_and_detach() -> None:
    torch.manual_seed(0)
    loss = small_loss()
    source = nn.Parameter(images(2, 1))
    x, xr = images(2, 0), torch.tanh(source)
    out = loss.discriminator_loss(x, xr)
    assert set(out) == {"loss", "logits_real", "logits_fake"}
    out["loss"].backward()
    assert source.grad is None
    for name, p in loss.discriminator.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        expected = hinge_d_loss(loss.discriminator(x), loss.discriminator(xr))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_losses_run_in_float32_under_autocast() -> None:
    loss = small_loss()
    x, xr = images(2, 0), images(2, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss.generator_loss(x.bfloat16(), xr.bfloat16(), torch.tensor(1.0), gan_active=True)
        d = loss.discriminator_loss(x.bfloat16(), xr.bfloat16())
    assert out["loss"].dtype == torch.float32 and d["loss"].dtype == torch.float32


def test_trainable_state_dict_only_discriminator(full_loss: TokenizerLoss) -> None:
    state = full_loss.trainable_state_dict()
    assert set(state) == {"discriminator." + k for k in full_loss.discriminator.state_dict()}
    torch.manual_seed(1)
    other = small_loss()
    other.load_trainable_state_dict(state)
    for a, b in zip(full_loss.discriminator.state_dict().values(), other.discriminator.state_dict().values()):
        assert torch.equal(a, b)


# ---- weight files -----------------------------------------------------------------------------------


def test_missing_weights_error_names_file_and_folders(no_weights: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        find_weights(VGG16_FILE, what="VGG16 ImageNet weights", key="vgg_path")
    msg = str(info.value)
    assert VGG16_FILE in msg and "VGG16 ImageNet weights" in msg and "vgg_path" in msg
    assert "perceptual_pretrained=false" in msg and "~/.cache/detok/weights" in msg
    for folder in search_dirs():
        assert str(folder) in msg
    assert str(no_weights / "env") in msg and str(no_weights / "torch" / "hub" / "checkpoints") in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        find_weights(VGG16_FILE, explicit=str(no_weights / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=VGG16_FILE):
        TokenizerLoss(TokenizerLossConfig())  # pretrained by default: fails before building anything
    with pytest.raises(FileNotFoundError, match=CONVNEXT_FILE):
        ConvNeXtLogitLoss()
    with pytest.raises(FileNotFoundError, match=LPIPS_HEADS_FILE):
        find_lpips_heads()


def test_find_weights_search_order(no_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_dir, torch_dir = no_weights / "env", no_weights / "torch" / "hub" / "checkpoints"
    torch_dir.mkdir(parents=True)
    (torch_dir / "a.pth").write_bytes(b"x")
    assert find_weights("a.pth") == torch_dir / "a.pth"
    env_dir.mkdir()
    (env_dir / "a.pth").write_bytes(b"x")
    assert find_weights("a.pth") == env_dir / "a.pth"
    explicit = no_weights / "elsewhere.pth"
    explicit.write_bytes(b"x")
    assert find_weights("a.pth", explicit=str(explicit)) == explicit


def test_lpips_heads_from_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, sub in (("DETOK_WEIGHTS_DIR", "env"), ("HOME", "home"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    shipped = tmp_path / "site" / "lpips" / "weights" / "v0.1" / LPIPS_HEADS_FILE
    shipped.parent.mkdir(parents=True)
    (tmp_path / "site" / "lpips" / "__init__.py").write_text("")
    shipped.write_bytes(b"x")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_lpips_heads() == shipped


def test_pretrained_files_load_exactly(no_weights: Path) -> None:
    torch.manual_seed(0)
    tv_features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # = vgg16().features
    env_dir = no_weights / "env"
    env_dir.mkdir()
    torch.save({f"features.{k}": v for k, v in tv_features.state_dict().items()}, env_dir / VGG16_FILE)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(heads, env_dir / LPIPS_HEADS_FILE)
    lp = LPIPS(pretrained=True)
    x = images(2, 0)
    with torch.no_grad():
        ours = lp.taps(x)
        h, theirs = x, []
        for i, layer in enumerate(tv_features):
            h = layer(h)
            if i in VGG16_TAPS:
                theirs.append(h.clone())
    assert len(ours) == 5 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert all(torch.equal(lp.heads[i].weight, heads[f"lin{i}.model.1.weight"]) for i in range(5))
    assert not any(p.requires_grad for p in lp.parameters()) and not lp.training
    bare = no_weights / "bare.pth"
    torch.save(tv_features.state_dict(), bare)  # a bare `features` state dict also loads
    lp2 = LPIPS(pretrained=True, vgg_path=str(bare))
    assert torch.equal(lp2.features[28].weight, tv_features[28].weight)


def test_convnext_file_loads_exactly(full_loss: TokenizerLoss, no_weights: Path) -> None:
    source = full_loss.convnext  # a random torchvision convnext_small inside
    assert source is not None and isinstance(source.net, torchvision.models.ConvNeXt)
    path = no_weights / "cnx.pth"
    torch.save(source.net.state_dict(), path)
    cn = ConvNeXtLogitLoss(pretrained=True, weights_path=str(path), size=source.size)
    assert not cn.training and not any(p.requires_grad for p in cn.parameters())
    x = images(1, 0)
    with torch.no_grad():
        torch.testing.assert_close(cn.logits(x), source.logits(x), rtol=0, atol=0)
