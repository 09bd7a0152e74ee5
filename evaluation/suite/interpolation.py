"""Plot: decoded straight line between the codes of the first two test images (10 steps)."""
from __future__ import annotations

from evaluation.suite.base import EvalContext, Metric, Result, to_model_input


class Interpolation(Metric):
    name = "interpolation"
    modality = "image"
    needs = frozenset({"encode", "decode"})
    plots = ("interpolation.png",)

    def compute(self, ctx: EvalContext) -> Result:
        import torch

        from evaluation import plots

        model, device = ctx.model, ctx.device
        test_x, test_y = ctx.test
        pair = torch.from_numpy(to_model_input(test_x[:2], ctx.modality)).to(device)
        # a conditional model interpolates the style code under the first image's label
        pair_labels = torch.from_numpy(test_y[:2]).long().to(device) if "conditional" in ctx.capabilities else None
        with torch.no_grad():
            z = model.encode(pair, pair_labels)
            steps = torch.linspace(0, 1, 10, device=device)[:, None]
            mix = z[0:1] * (1 - steps) + z[1:2] * steps
            strip = model.decode(mix, None if pair_labels is None else pair_labels[:1].repeat(10)).cpu().numpy()
        plots.save_interpolation_strip(strip, ctx.plot_path("interpolation.png"))
        return {}
