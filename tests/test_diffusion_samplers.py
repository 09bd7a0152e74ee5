"""DDIM and DPM-Solver++(2M), both loops (genmodels/ddim.py in PyTorch, serving/sampler_ddim.py in NumPy),
against an independent implementation: diffusers' ``DDIMScheduler`` and ``DPMSolverMultistepScheduler``
(a test-only dependency) built from the same betas and "trailing" timesteps and fed the same model
outputs, from a fixed random linear "model", must visit the same trajectory to float tolerance.
Then classifier-free guidance: the torch and numpy guided loops agree. Runs in a few seconds.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from contracts.diffusion import alphas_cumprod, ddim_timesteps, dpmpp_2m_coefficients, guided_eps
from genmodels.ddim import ddim_sample
from serving.sampler_ddim import ddim_loop, guided_eps_fn

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 1000
SHAPE = (3, 1, 4, 4)
D = 16


class _LinearModel:
    """A fixed random linear "model": eps(x, t) = (x - sqrt(a_t) m(x, t)) / sqrt(1 - a_t), the eps whose data
    prediction is m(x, t) = x_flat @ W + b t / T + c (small random W, so the trajectory stays data-like, as a
    trained eps keeps it). The same numbers for every caller."""

    def __init__(self, acp, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sa, self.s1a = np.sqrt(np.asarray(acp)), np.sqrt(1.0 - np.asarray(acp))
        self.w = rng.standard_normal((D, D)) * 0.3 / np.sqrt(D)
        self.b = rng.standard_normal(D) * 0.3
        self.c = rng.standard_normal(D) * 0.5

    def __call__(self, x: np.ndarray, t: int) -> np.ndarray:
        flat = x.reshape(len(x), D).astype(np.float64)
        m = flat @ self.w + self.b * (t / T) + self.c
        return ((flat - self.sa[t] * m) / self.s1a[t]).reshape(x.shape).astype(np.float32)


def _betas(acp: list[float]) -> np.ndarray:
    """The betas whose cumulative product is ``acp`` (what diffusers is built from)."""
    a = np.asarray(acp, dtype=np.float64)
    return 1.0 - a / np.concatenate([[1.0], a[:-1]])


def _in_float64(scheduler, betas: np.ndarray):
    """diffusers keeps its betas and alphas_cumprod in float32 (a 1e-4 relative error at the end of the
    cosine schedule); the same betas' cumulative product in float64, as contracts.diffusion computes it,
    isolates the sampler arithmetic. Set before set_timesteps, which derives the sigmas from it."""
    scheduler.alphas_cumprod = torch.cumprod(1.0 - torch.from_numpy(betas), dim=0)
    return scheduler


def _reference(scheduler, model, x_T: np.ndarray, noises=None, **step_kwargs) -> list[np.ndarray]:
    """diffusers' trajectory: the x fed to the model at every step, then the final sample."""
    x = torch.from_numpy(x_T.copy())
    seen = []
    for i, t in enumerate(scheduler.timesteps):
        seen.append(x.numpy().copy())
        eps = torch.from_numpy(model(x.numpy(), int(t)))
        extra = {"variance_noise": torch.from_numpy(noises[i])} if noises is not None else {}
        x = scheduler.step(eps, t, x, **step_kwargs, **extra).prev_sample.float()
    return seen + [x.numpy()]


def _ours(model, x_T: np.ndarray, acp, steps, *, sampler, eta=0.0, clip=False, noises=None):
    """(torch trajectory, numpy trajectory): x at every model call, then the final sample."""
    seen_t, seen_n = [], []

    def eps_torch(x, t):
        seen_t.append(x.numpy().copy())
        return torch.from_numpy(model(x.numpy(), int(t[0])))

    def eps_numpy(x, t):
        seen_n.append(x.copy())
        return model(x, t)

    class _Fixed:  # the numpy loop's rng and the torch loop's generator hand out the same z's
        def __init__(self):
            self.i = 0

        def standard_normal(self, shape, dtype):
            self.i += 1
            return noises[self.i].astype(dtype)

    gen = None
    if noises is not None:  # torch draws its z's from a generator: seed one, and read its draws back
        gen = torch.Generator().manual_seed(11)
        probe = torch.Generator().manual_seed(11)
        for i in range(1, steps):
            noises[i] = torch.randn(SHAPE, generator=probe).numpy()
    want = ddim_sample(eps_torch, torch.from_numpy(x_T), acp, steps, eta=eta, clip=clip, generator=gen,
                       sampler=sampler).numpy()
    got = ddim_loop(eps_numpy, x_T, acp, steps, eta=eta, clip=clip, rng=_Fixed(), sampler=sampler)
    return seen_t + [want], seen_n + [got]


def _assert_same(ref: list[np.ndarray], mine: list[np.ndarray], tol: float) -> None:
    """Every step within ``tol`` of the step's scale (max |x|, at least 1): float32 noise of the schedule
    (diffusers holds alphas_cumprod in float32, we in float64) grows with |x|."""
    assert len(ref) == len(mine)
    for k, (a, b) in enumerate(zip(ref, mine)):
        np.testing.assert_allclose(b, a, rtol=0, atol=tol * max(1.0, float(np.abs(a).max())), err_msg=f"step {k}")


@pytest.mark.parametrize("schedule, steps, eta, clip", [("linear", 10, 0.0, False), ("linear", 20, 0.0, True),
                                                        ("cosine", 50, 0.0, False), ("linear", 10, 0.7, False)])
def test_ddim_matches_diffusers(schedule, steps, eta, clip):
    # diffusers' DDIM steps back by T // S, so its trailing timesteps are consistent only when S divides T
    acp = alphas_cumprod(schedule, T)
    sched = _in_float64(diffusers.DDIMScheduler(num_train_timesteps=T, trained_betas=_betas(acp), clip_sample=clip,
                                                clip_sample_range=1.0, set_alpha_to_one=True,
                                                timestep_spacing="trailing"), _betas(acp))
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == ddim_timesteps(T, steps)
    model = _LinearModel(acp)
    x_T = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    noises = [None] * steps if eta else None
    torch_traj, numpy_traj = _ours(model, x_T, acp, steps, sampler="ddim", eta=eta, clip=clip, noises=noises)
    if noises is not None:
        noises = noises[1:] + [np.zeros(SHAPE, np.float32)]  # z of step i is drawn after step i's update
    ref = _reference(sched, model, x_T, noises, eta=eta)
    _assert_same(ref, torch_traj, 2e-5)
    _assert_same(ref, numpy_traj, 2e-5)
    assert np.abs(ref[-1] - x_T).max() > 0.5 and np.abs(ref[-1]).max() < 5  # it went somewhere, data-like


@pytest.mark.parametrize("schedule, steps, clip", [("linear", 15, False), ("linear", 7, True), ("cosine", 20, False),
                                                   ("linear", 1, False), ("linear", 2, False)])
def test_dpmpp_2m_matches_diffusers(schedule, steps, clip):
    acp = alphas_cumprod(schedule, T)
    # thresholding with sample_max_value 1 is a plain clip of the data prediction to [-1, 1]
    sched = _in_float64(diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, trained_betas=_betas(acp), algorithm_type="dpmsolver++", solver_order=2,
        solver_type="midpoint", timestep_spacing="trailing", final_sigmas_type="zero", lower_order_final=True,
        thresholding=clip, sample_max_value=1.0), _betas(acp))
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == ddim_timesteps(T, steps)
    model = _LinearModel(acp, 3)
    x_T = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    ref = _reference(sched, model, x_T)
    torch_traj, numpy_traj = _ours(model, x_T, acp, steps, sampler="dpmpp_2m", clip=clip)
    # 1e-4: float32 eps times 1/sqrt(a_999) ~ 160 in the data prediction
    _assert_same(ref, torch_traj, 1e-4)
    _assert_same(ref, numpy_traj, 1e-4)
    assert np.abs(ref[-1] - x_T).max() > 0.5 and np.abs(ref[-1]).max() < 5


def test_dpmpp_coefficients_first_order_is_ddim():
    """Step 2 of the derivation: a first-order DPM-Solver++ step is DDIM with eta 0, and the second-order
    weights of x0_i and x0_{i-1} add up to the first-order one (D_i is an extrapolation of x0)."""
    from contracts.diffusion import ddim_coefficients

    acp = alphas_cumprod("linear", T)
    seq = ddim_timesteps(T, 10)
    coefs = dpmpp_2m_coefficients(acp, seq)
    assert len(coefs) == 10 and coefs[-1][2:] == (0.0, 1.0, 0.0)
    _, s1a, sa_prev, dir_coef, _ = ddim_coefficients(acp, seq[0], seq[1], 0.0)
    sa, s1a_, c_x, c_cur, c_prev = coefs[0]
    # DDIM: x' = sa' (x - s1a eps)/sa + dir eps; with eps = (x - sa x0)/s1a it is c_x x + c_cur x0
    assert c_prev == 0 and c_x == pytest.approx(dir_coef / s1a) and c_cur == pytest.approx(sa_prev - dir_coef * sa / s1a)
    for i in range(1, 9):
        a_t = acp[seq[i + 1]]
        lam = lambda a: 0.5 * np.log(a / (1 - a))  # noqa: E731
        h = lam(a_t) - lam(acp[seq[i]])
        assert coefs[i][3] + coefs[i][4] == pytest.approx(np.sqrt(a_t) * (1 - np.exp(-h)))
        assert coefs[i][4] < 0
    with pytest.raises(ValueError, match="descending"):
        dpmpp_2m_coefficients(acp, [5, 9])


def test_guided_loops_agree_and_guidance_convention():
    """eps_u + w (eps_c - eps_u): w = 0 is the unconditional prediction, w = 1 the conditional one; the
    torch guided denoiser (genmodels.ddpm) and serving's guided_eps_fn (one call of 2N) agree."""
    from genmodels import build_model

    model = build_model("ddpm", dict(image_shape=(1, 8, 8), base_channels=8, channel_mult=(1, 2), timesteps=50,
                                     sample_steps=4, conditional=True, num_classes=3)).eval()
    with torch.no_grad():  # zero-initialised convs hide the labels: spread every weight of the untrained net
        for i, p in enumerate(model.ema.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.2)
    calls = []

    def run(x, t, y):  # what the ORT session computes, from the same EMA net
        calls.append(len(x))
        with torch.no_grad():
            return model.ema(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()

    labels = np.array([0, 2, 1, 2], dtype=np.int64)
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    eps_c = run(x, np.full(4, 30), labels)
    eps_u = run(x, np.full(4, 30), np.full(4, 3))
    assert np.abs(eps_c - eps_u).max() > 0.05  # the label matters
    for w in (0.0, 1.0, 2.5):
        calls.clear()
        got = guided_eps_fn(run, 4, labels, w, 3)(x, 30)
        assert calls == ([8] if w == 2.5 else [4])  # one batched call of 2N, or one of N
        np.testing.assert_allclose(got, guided_eps(eps_c, eps_u, w), atol=1e-5)
    np.testing.assert_allclose(guided_eps_fn(run, 4, labels, 0.0, 3)(x, 30), eps_u, atol=1e-6)
    np.testing.assert_allclose(guided_eps_fn(run, 4, labels, 1.0, 3)(x, 30), eps_c, atol=1e-6)

    assert model.sampling["guidance_min_t"] == 10  # 0.2 T: every one of the 4 steps (t 49, 37, 24, 12) guided
    for sampler, w, min_t in (("ddim", 3.0, 0), ("dpmpp_2m", 2.0, None), ("dpmpp_2m", 0.0, 0),
                              ("ddim", 3.0, 30), ("dpmpp_2m", 2.0, 30), ("dpmpp_2m", 0.0, 30)):
        want = model.denoise_from(torch.from_numpy(x), labels=torch.from_numpy(labels), sampler=sampler,
                                  guidance_scale=w, guidance_min_t=min_t).numpy()
        spec = model.sampler().with_sampling(sampler=sampler, guidance_scale=w, guidance_min_t=min_t)
        calls.clear()
        got = ddim_loop(guided_eps_fn(run, 4, labels, spec.guidance_scale, spec.null_label, spec.guidance_min_t), x,
                        spec.alphas_cumprod, spec.sample_steps, eta=0.0, clip=True, rng=None, sampler=sampler)
        np.testing.assert_allclose(np.clip((got + 1) * 0.5, 0, 1), want, atol=1e-5)
        if min_t == 30:  # guidance interval: t 49 and 37 guided (2N), t 24 and 12 conditional only (N)
            unlimited = model.denoise_from(torch.from_numpy(x), labels=torch.from_numpy(labels), sampler=sampler,
                                           guidance_scale=w, guidance_min_t=0).numpy()
            if w == 0.0:  # w = 0 is the unconditional model at every step, whatever min_t
                assert calls == [4, 4, 4, 4] and np.array_equal(unlimited, want)
            else:
                assert calls == [8, 8, 4, 4] and np.abs(unlimited - want).max() > 1e-3
    a = model.denoise_from(torch.from_numpy(x), labels=torch.from_numpy(labels), guidance_scale=3.0)
    b = model.denoise_from(torch.from_numpy(x), labels=torch.from_numpy(labels), guidance_scale=1.0)
    assert not torch.allclose(a, b)
