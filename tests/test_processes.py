"""Processes: parity with DiT's / SiT's own numbers (../shared/fixtures) and invariants of our own."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import load_fixture
from detok.processes import FlowTransport, GaussianDiffusion, cfg_fn, linear_cfg, shift_time, space_timesteps

SCHEDULES = ["linear", "cosine"]


@pytest.fixture(scope="module")
def ref():
    """Test vectors made by DiT's diffusion/ and SiT's transport/ code (tests/fixtures/processes_dit_sit.pt)."""
    return load_fixture("processes_dit_sit.pt")


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    """assert_close without the dtype check (fixture tables may be float32 or float64)."""
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# --- parity with DiT (linear) and l-DeTok's vendored copy (cosine, MAR's head) -------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gaussian_tables_match_dit(ref, schedule):
    g, p = ref["gaussian"][schedule], GaussianDiffusion(schedule)
    assert p.betas.dtype == p.alphas_cumprod.dtype == torch.float64
    close(p.betas, g["betas"], atol=1e-15, rtol=1e-13)
    close(p.alphas_cumprod, g["alphas_cumprod"], atol=1e-15, rtol=1e-13)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gaussian_q_sample_and_p_mean_variance_match_dit(ref, schedule):
    g, p = ref["gaussian"][schedule], GaussianDiffusion(schedule)
    close(p.q_sample(g["x0"], g["t"], g["noise"]), g["x_t"])
    out = p.p_mean_variance(g["model_output"], g["x_t"], g["t"])  # model output [eps | v] on dim 1
    close(out["mean"], g["p_mean"], atol=1e-5)
    close(out["log_variance"], g["p_log_variance"], atol=1e-5)
    close(out["pred_xstart"], g["pred_xstart"], atol=1e-5)
    close(out["variance"], g["p_log_variance"].exp(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gaussian_training_losses_match_dit(ref, schedule):
    g, p = ref["gaussian"][schedule], GaussianDiffusion(schedule)
    terms = p.training_losses(lambda x, t: g["model_output"], g["x0"], t=g["t"], noise=g["noise"])
    for key in ("mse", "vb", "loss"):
        close(terms[key], g[key], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spec", ["100", "250", "ddim25"])
def test_gaussian_respacing_matches_dit(ref, schedule, spec):
    g, p = ref["gaussian"][schedule], GaussianDiffusion(schedule).respace(spec)
    assert torch.equal(p.timestep_map, g[f"respaced_{spec}_timestep_map"])
    assert p.num_timesteps == len(g[f"respaced_{spec}_timestep_map"])
    close(p.betas, g[f"respaced_{spec}_betas"], atol=1e-15, rtol=1e-12)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_gaussian_ddim_step_matches_dit(ref, schedule):
    g, p = ref["gaussian"][schedule], GaussianDiffusion(schedule).respace("ddim25")
    out = p.ddim_step(g["model_output"], g["ddim25_x_t"], g["ddim25_t"], eta=0.0)
    close(out, g["ddim25_step_eta0"], atol=1e-5, rtol=1e-5)


def test_flow_path_and_loss_match_sit(ref):
    f, tr = ref["flow"], FlowTransport()
    x_t, u_t = tr.plan(f["t"], f["x0_noise"], f["x1_data"])
    close(x_t, f["x_t"])
    close(u_t, f["u_t"])
    terms = tr.training_losses(lambda x, t: f["model_output"], f["x1_data"], t=f["t"], noise=f["x0_noise"])
    close(terms["loss"], f["loss"])


@pytest.mark.parametrize(
    ("method", "steps", "key"),
    [
        ("euler", 10, "ode_euler_10_final"),
        ("euler", 50, "ode_euler_50_final"),
        ("dopri5", 20, "ode_dopri5_20_final"),
    ],
)
def test_flow_ode_matches_sit(ref, method, steps, key):
    f = ref["flow"]

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.5 - x * t.view(-1, 1, 1, 1)  # the fixture's analytic velocity

    out = FlowTransport().sample_ode(velocity, f["ode_init"], steps=steps, method=method)
    close(out, f[key], atol=1e-5 if method == "dopri5" else 1e-6)


# --- Gaussian invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_q_sample_closed_form(schedule):
    p = GaussianDiffusion(schedule)
    if schedule == "linear":  # abar_t = prod_{s <= t} (1 - beta_s), beta linear from 1e-4 to 2e-2
        abar = [
            math.prod(1 - (1e-4 + (0.02 - 1e-4) * s / 999) for s in range(t + 1)) for t in (0, 10, 500, 999)
        ]
    else:  # abar_t = f(t + 1) / f(0), f(u) = cos^2((u / T + s) / (1 + s) pi / 2); unclipped away from the end
        f = [math.cos(((u / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2 for u in (0, 1, 11, 501, 1000)]
        abar = [f[i] / f[0] for i in (1, 2, 3)] + [float(p.alphas_cumprod[999])]
    t = torch.tensor([0, 10, 500, 999])
    x0, noise = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    a = torch.tensor(abar, dtype=torch.float64).view(4, 1, 1, 1)
    close(p.q_sample(x0, t, noise), a.sqrt() * x0 + (1 - a).sqrt() * noise, atol=1e-12, rtol=1e-9)


def test_eps_xstart_conversions_invert():
    p = GaussianDiffusion("cosine")
    x_t, eps = torch.randn(5, 4, 3, dtype=torch.float64), torch.randn(5, 4, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 300, 700, 998])
    x0 = p.predict_xstart_from_eps(x_t, t, eps)
    close(p.predict_eps_from_xstart(x_t, t, x0), eps, atol=1e-9, rtol=1e-9)
    close(p.q_sample(x0, t, eps), x_t, atol=1e-9, rtol=1e-9)


def test_p_mean_variance_clip_clamps_pred_xstart_before_the_posterior_mean():
    """clip=c: pred_xstart clamped to [-c, c], the mean is the posterior mean of the clamped x0, the variance
    is unchanged; clip=None is the free (upstream) computation."""
    p = GaussianDiffusion("cosine", learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    x_t, eps = 3 * torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([999, 999, 500, 10, 1, 0])
    free, clipped = p.p_mean_variance(eps, x_t, t), p.p_mean_variance(eps, x_t, t, clip=2.0)
    assert free["pred_xstart"].abs().max() > 1e3  # abar at t = 999 is ~2e-9
    close(clipped["pred_xstart"], free["pred_xstart"].clamp(-2.0, 2.0), atol=0, rtol=0)
    mean, _, _ = p.q_posterior_mean_variance(free["pred_xstart"].clamp(-2.0, 2.0), x_t, t)
    close(clipped["mean"], mean, atol=0, rtol=0)
    close(clipped["variance"], free["variance"], atol=0, rtol=0)
    loose = p.p_mean_variance(eps, x_t, t, clip=1e12)
    close(loose["mean"], free["mean"], atol=0, rtol=0)


def test_respace_full_equals_original_and_spec_forms():
    p = GaussianDiffusion("linear")
    full = p.respace("1000")
    assert torch.equal(full.betas, p.betas) and torch.equal(full.timestep_map, torch.arange(1000))
    assert torch.equal(p.respace(100).timestep_map, p.respace("100").timestep_map)
    assert space_timesteps(10, "2,3") == [0, 4, 5, 7, 9]  # sections [0, 5) and [5, 10)
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError):
        space_timesteps(10, "6,1")


def test_per_token_inputs_and_fixed_variance():
    p = GaussianDiffusion("cosine")
    x_t, t = torch.randn(6, 16), torch.randint(0, 1000, (6,))
    out = p.p_mean_variance(torch.randn(6, 32), x_t, t)  # (B, 2C) per-token output
    assert all(v.shape == (6, 16) for v in out.values())
    q = GaussianDiffusion("linear", learn_sigma=False)
    out = q.p_mean_variance(torch.randn(6, 16), x_t, t)
    close(out["variance"][:, 0], q.fixed_large_variance[t], atol=1e-7, rtol=1e-5)
    terms = q.training_losses(lambda x, s: torch.zeros_like(x), x_t)
    assert set(terms) == {"loss", "mse"} and torch.equal(terms["loss"], terms["mse"])


def test_vb_trains_sigma_only_and_model_sees_original_steps():
    p = GaussianDiffusion("linear").respace("ddim25")
    out = torch.randn(4, 8, 2, 2, requires_grad=True)
    seen = []

    def model(x, t):
        seen.append(t)
        return out

    terms = p.training_losses(model, torch.randn(4, 4, 2, 2), t=torch.tensor([0, 3, 10, 24]))
    assert torch.equal(seen[0], torch.tensor([0, 120, 400, 960]))
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert grad[:, :4].abs().max() == 0 and grad[:, 4:].abs().max() > 0


def _delta_eps(point: torch.Tensor):
    """Model whose eps is exact for data concentrated at `point`, with sigma output v = 0 appended."""
    abar = GaussianDiffusion("linear").alphas_cumprod

    def model(x, t):
        a = abar[t].to(x).view(-1, *([1] * (x.ndim - 1)))
        return torch.cat([(x - a.sqrt() * point) / (1 - a).sqrt(), torch.zeros_like(x)], dim=1)

    return model


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_sampler_recovers_delta(sampler):
    point = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    p = GaussianDiffusion("linear").respace("50")
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(5, 3, 2, 2, generator=gen, dtype=torch.float64)
    steps = []
    model = _delta_eps(point)

    def recording(x, t):
        steps.append(int(t[0]))
        return model(x, t)

    if sampler == "ancestral":
        out = p.p_sample_loop(recording, noise, rng=gen, temperature=0.9)
    else:
        out = p.ddim_sample_loop(recording, noise, eta=0.5, rng=gen)
    close(out, point.expand_as(out), atol=1e-8, rtol=0)
    assert steps == p.timestep_map.flip(0).tolist()  # the model sees original step indices, noisiest first


def test_gaussian_sampling_deterministic_and_leaves_global_rng():
    p = GaussianDiffusion("cosine").respace("10")
    noise = torch.randn(3, 4)

    def model(x, t):
        return torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)

    state = torch.get_rng_state()
    a = p.p_sample_loop(model, noise, rng=torch.Generator().manual_seed(1))
    b = p.p_sample_loop(model, noise, rng=torch.Generator().manual_seed(1))
    c = p.p_sample_loop(model, noise, rng=torch.Generator().manual_seed(2))
    la = p.training_losses(model, noise, rng=torch.Generator().manual_seed(3))["loss"]
    lb = p.training_losses(model, noise, rng=torch.Generator().manual_seed(3))["loss"]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(la, lb)


# --- flow invariants -----------------------------------------------------------------------------------


def test_flow_conversions_invert():
    tr = FlowTransport()
    x0, x1 = torch.randn(4, 3, 2, 2, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.7, 0.95], dtype=torch.float64)
    x_t, u = tr.plan(t, x0, x1)
    close(tr.velocity_to_data(u, x_t, t), x1, atol=1e-12, rtol=0)
    close(tr.velocity_to_noise(u, x_t, t), x0, atol=1e-12, rtol=0)
    close(tr.data_noise_to_velocity(x1, x0), u, atol=0, rtol=0)
    close(tr.score_from_velocity(u, x_t, t), -x0 / (1 - t).view(-1, 1, 1, 1), atol=1e-12, rtol=1e-12)


def test_flow_training_losses_and_time_sampling():
    tr = FlowTransport("logit_normal", t_mean=0.5)
    t = tr.sample_t(20000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and 0 < t.min() and t.max() < 1
    assert abs(t.median().item() - 1 / (1 + math.exp(-0.5))) < 0.01
    x1 = torch.randn(3, 4, 2, 2)
    same = tr.training_losses(lambda x, s: 2 * (x1 - x), x1, t=torch.zeros(3), noise=torch.zeros_like(x1))
    flip = tr.training_losses(lambda x, s: -x1, x1, t=torch.zeros(3), noise=torch.zeros_like(x1))
    close(same["cos_loss"], torch.zeros(3), atol=1e-6, rtol=0)  # v = 2 u: same direction
    close(flip["cos_loss"], 2 * torch.ones(3), atol=1e-6, rtol=0)
    close(flip["loss"], 4 * x1.pow(2).mean(dim=(1, 2, 3)))
    g1 = tr.training_losses(lambda x, s: x, x1, rng=torch.Generator().manual_seed(5))["loss"]
    g2 = tr.training_losses(lambda x, s: x, x1, rng=torch.Generator().manual_seed(5))["loss"]
    assert torch.equal(g1, g2)


def test_shift_time():
    t = torch.linspace(0, 1, 11)
    assert torch.equal(shift_time(t, 1.0), t)
    s = shift_time(t, 0.3)
    assert s[0] == 0 and s[-1] == 1 and (s.diff() > 0).all() and (s[1:-1] < t[1:-1]).all()
    assert math.isclose(float(s[5]), 0.15 / 0.65, rel_tol=1e-6)


def _gaussian_velocity(m: float, s: float):
    """Exact velocity for data N(m, s^2 I): the flow maps noise z to m + s z."""

    def v(x, t):
        t = t.to(x).view(-1, *([1] * (x.ndim - 1)))
        var = t**2 * s**2 + (1 - t) ** 2
        return m + (t * s**2 - (1 - t)) * (x - t * m) / var

    return v


@pytest.mark.parametrize(
    ("method", "steps", "shift", "tol"),
    [("euler", 100, 1.0, 3e-2), ("heun", 30, 1.0, 2e-3), ("heun", 30, 0.3, 5e-3), ("dopri5", 5, 1.0, 1e-3)],
)
def test_ode_pushes_noise_to_gaussian_data(method, steps, shift, tol):
    z = torch.randn(8, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = _gaussian_velocity(1.5, 0.5)
    out = FlowTransport().sample_ode(v, z, steps=steps, method=method, shift=shift, rtol=1e-5)
    close(out, 1.5 + 0.5 * z, atol=tol, rtol=0)  # Euler first order, Heun second; dopri5 adaptive


def test_euler_recovers_delta():
    point = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    z = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    v = lambda x, t: (point - x) / (1 - t.to(x).view(-1, 1, 1, 1))  # noqa: E731
    close(FlowTransport().sample_ode(v, z, steps=7, shift=0.3), point.expand_as(z), atol=1e-12, rtol=0)


def test_sde_matches_gaussian_data_statistics_and_is_seeded():
    tr = FlowTransport()
    z = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a = tr.sample_sde(_gaussian_velocity(1.5, 0.5), z, steps=60, rng=torch.Generator().manual_seed(1))
    b = tr.sample_sde(_gaussian_velocity(1.5, 0.5), z, steps=60, rng=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    # sqrt(w dt) instead of sqrt(2 w dt) in the noise term would give std 0.37 here
    assert abs(a.mean().item() - 1.5) < 0.03 and abs(a.std().item() - 0.5) < 0.025


# --- guidance ------------------------------------------------------------------------------------------


def _two_headed(c_out: int):
    """Toy network: output depends on the label so cond and uncond differ; x's second half is ignored."""
    w = torch.randn(c_out, 4, generator=torch.Generator().manual_seed(0))

    def model(x, t, y):
        return torch.einsum("oc,bchw->bohw", w, x) + y.view(-1, 1, 1, 1).float() + t.view(-1, 1, 1, 1)

    return model


@pytest.mark.parametrize("c_out", [4, 8])
def test_cfg_scale_one_is_conditional(c_out):
    model = _two_headed(c_out)
    x = torch.randn(3, 4, 2, 2)
    xx, t, y = torch.cat([x, torch.randn_like(x)]), torch.full((6,), 0.5), torch.tensor([1, 2, 3, 0, 0, 0])
    out = cfg_fn(model, 1.0)(xx, t, y)
    close(out[:3], model(torch.cat([x, x]), t, y)[:3], atol=1e-6, rtol=0)


def test_cfg_channels_flag_sigma_half_and_interval():
    model = _two_headed(8)  # learned sigma: 2C = 8 output channels for C = 4
    x = torch.randn(2, 4, 2, 2)
    xx, y = torch.cat([x, x]), torch.tensor([5, 6, 0, 0])
    t = torch.tensor([0.05, 0.5, 0.05, 0.5])
    raw = model(xx, t, y)
    full = cfg_fn(model, 3.0)(xx, t, y)
    first3 = cfg_fn(model, 3.0, channels=3)(xx, t, y)
    assert not torch.equal(full[:2, :4], raw[:2, :4]) and torch.equal(
        full[:2, 4:], raw[:2, 4:]
    )  # sigma: cond
    assert torch.equal(full[2:, :4], full[:2, :4])  # both halves carry the guided prediction
    assert torch.equal(first3[:2, :3], full[:2, :3]) and torch.equal(first3[:2, 3:], raw[:2, 3:])
    gated = cfg_fn(model, 3.0, interval=(0.1, 1.0))(xx, t, y)
    assert torch.equal(gated[0], raw[0]) and torch.equal(gated[1], full[1])  # t = 0.05 outside: conditional
    ramp = cfg_fn(model, lambda tt: 1 + 4 * tt)(xx, t, y)  # per-sample scale from t
    close(ramp[:2, :4], raw[2:, :4] + (1 + 4 * t[:2]).view(-1, 1, 1, 1) * (raw[:2, :4] - raw[2:, :4]))


def test_linear_cfg():
    assert linear_cfg(4.0, 0.0) == 1.0 and linear_cfg(4.0, 1.0) == 4.0 and linear_cfg(3.0, 0.25) == 1.5
