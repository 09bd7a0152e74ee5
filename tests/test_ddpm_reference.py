"""benchmarks/ddpm_reference.py, the ddpm peer (diffusers' train_unconditional recipe): its parts train and
sample, and its CPU budget stops training. No real training: a few steps on tiny random batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from benchmarks import ddpm_reference as ref  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield
    torch.set_num_threads(before)


def _batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_recipe_trains_and_every_sampler_draws_images():
    r = ref.build(seed=0, total_steps=10)
    assert r.optimizer.param_groups[0]["lr"] == 0.0  # the cosine schedule starts its 500-step warm-up at 0
    before = [p.detach().clone() for p in r.unet.parameters()]
    out = ref.train(r, _batch(6), epochs=1, budget_cpu_s=0, seed=0, batch_size=4)
    assert out["steps"] == 2 and out["epochs"] == 1.0  # 6 images in batches of 4: the last one smaller
    assert np.isfinite(out["loss"]) and out["cpu_s"] > 0
    assert r.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 2 / 500)
    assert any(not torch.equal(a, b) for a, b in zip(before, r.unet.parameters()))
    net = ref.ema_unet(r)  # EMA warm-up: decay 0 at the first step, 1 - 2**-0.75 at the second
    assert any(not torch.equal(a, b) for a, b in zip(net.parameters(), r.unet.parameters()))
    for name in ref.SAMPLERS:
        sched, steps = ref.sampler(name, r.noise_scheduler)
        assert steps == ref.SAMPLERS[name][1]
        a = ref.sample(net, sched, n=3, steps=2, seed=1, chunk=2)
        assert a.shape == (3, 1, 28, 28) and a.dtype == np.float32
        assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0 and a.std() > 0
        np.testing.assert_array_equal(a, ref.sample(net, sched, n=3, steps=2, seed=1, chunk=2))
    clipped, _ = ref.sampler("dpm10", r.noise_scheduler)  # thresholding at sample_max_value 1 = clip x0 to [-1, 1]
    x0 = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(clipped._threshold_sample(x0), x0.clamp(-1, 1))
    assert not ref.sampler("dpm10_noclip", r.noise_scheduler)[0].config.thresholding
    with pytest.raises(ValueError, match="unknown sampler"):
        ref.sampler("ddim50", r.noise_scheduler)


def test_sample_chunks_are_saved_and_reused(tmp_path):
    net = ref.ema_unet(ref.build(seed=0, total_steps=10))
    sched, _ = ref.sampler("dpm10", ref.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
    first = ref.sample(net, sched, n=3, steps=2, seed=1, chunk=2, chunk_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk-000.npy", "chunk-001.npy"]
    np.save(tmp_path / "chunk-001.npy", np.zeros((1, 1, 28, 28), np.float32))  # a saved chunk is not redrawn
    again = ref.sample(net, sched, n=3, steps=2, seed=1, chunk=2, chunk_dir=tmp_path)
    np.testing.assert_array_equal(again[:2], first[:2])
    assert not again[2].any()


def test_cpu_budget_stops_training():
    x = _batch(8)
    full = ref.train(ref.build(seed=0, total_steps=8), x, epochs=2, budget_cpu_s=0, seed=0, batch_size=4)
    assert full["steps"] == 4 and full["epochs"] == 2.0
    cut = ref.train(ref.build(seed=0, total_steps=8), x, epochs=2, budget_cpu_s=1e-6, seed=0, batch_size=4)
    assert cut["steps"] == 1 and cut["epochs"] == 0.5 and cut["cpu_s"] >= 1e-6  # stops after the first step
