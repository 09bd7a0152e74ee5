"""Latent traversal plot and the number of active latent units (Burda et al. 2016)."""
from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.suite.base import EvalContext, Metric, Result, to_model_input


def traverse(model: Any, x: Any, labels: Any = None, dims: int = 8, steps: int = 9,
             span: float = 3.0) -> tuple[np.ndarray, list[int], int]:
    """Rows = the `dims` latent units the encoder uses most (largest variance of posterior means over `x`),
    columns = that unit swept over [-span, span] from the first image's code, the others held.
    For a beta-VAE (beta > 1) each row should change one factor (slant, width, ...). Also returns the number of
    active units (variance of the posterior mean over the data above 0.01). x: float tensor N x C x H x W."""
    import torch

    with torch.no_grad():
        mu = model.encode(x, labels)
        variance = mu.var(0)
        order = variance.argsort(descending=True)[:dims].tolist()
        base = mu[0:1].repeat(steps, 1)
        sweep = torch.linspace(-span, span, steps, device=mu.device)
        rows = []
        for d in order:
            z = base.clone()
            z[:, d] = sweep
            rows.append(model.decode(z, None if labels is None else labels[0:1].repeat(steps)).cpu().numpy())
    return np.stack(rows), order, int((variance > 0.01).sum())


class LatentTraversal(Metric):
    name = "latent_traversal"
    modality = "image"
    needs = frozenset({"encode", "decode"})
    outputs = ("latent_traversal", "active_units")
    summary = ("active_units",)
    plots = ("latent_traversal.png",)

    def compute(self, ctx: EvalContext) -> Result:
        import torch

        from evaluation import plots

        test_x, test_y = ctx.test
        probe = torch.from_numpy(to_model_input(test_x[:500], ctx.modality)).to(ctx.device)
        labels = torch.from_numpy(test_y[:500]).long().to(ctx.device) if "conditional" in ctx.capabilities else None
        traversal, units, active = traverse(ctx.model, probe, labels)
        plots.save_interpolation_strip(traversal, ctx.plot_path("latent_traversal.png"))
        return {"latent_traversal": (units, {
                    "plot": "plots/latent_traversal.png", "span": [-3.0, 3.0],
                    "definition": "latent units by variance of posterior means on 500 test images, most used first"}),
                "active_units": (active, {
                    "latent_dim": int(ctx.model.config.latent_dim), "n_images": len(probe),
                    "definition": "latent units whose posterior mean varies over the data: Var_x E[z|x] > 0.01"})}
