"""genforge contracts: the torch-free types every layer shares (see ../shared/DESIGN.md).

- ``contracts.errors``: one error hierarchy (``GenforgeError`` and its kinds); the CLI prints any of
  them as one ``error:`` line.
- ``contracts.io``: atomic writes, sha256 of a file, deterministic npz bytes, atomic folder replacement.
- ``contracts.data``: ``DataSpec``, what a prepared data set holds (modality, sample shape, classes).
- ``contracts.samplers``: typed sampler specs (``SamplerSpec``: direct, ddim, autoregressive, flow), the
  content of ``sampler.json``, with validation and generate-time sampling options (``SamplerSpecError``).
- ``contracts.diffusion``: the DDPM/DDIM schedule arithmetic both DDIM loops (torch, numpy) use.

Import rule: this package imports the standard library and numpy only, never torch, mlflow or prefect,
so ``genmodels``, ``evaluation``, ``serving`` and ``pipelines`` can all import it.
"""
