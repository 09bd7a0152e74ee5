"""Model families (pure PyTorch). Import a family through ``get_family(name)``."""
from __future__ import annotations

import importlib

from genmodels.base import GenerativeModel, ModelConfig, OnnxGraph

# family name -> "module:Class"; modules import lazily so a family's import cost is paid only when used
FAMILIES: dict[str, str] = {
    "vae": "genmodels.vae:VAE",
    "cvae": "genmodels.cvae:CVAE",
    "dcgan": "genmodels.dcgan:DCGAN",
    "wgan_gp": "genmodels.wgan_gp:WGANGP",
    "ddpm": "genmodels.ddpm:DDPM",
    "pixelcnn": "genmodels.pixelcnn:PixelCNN",
    "realnvp": "genmodels.realnvp:RealNVP",
    "gpt": "genmodels.gpt:GPT",
    "lstm": "genmodels.lstm:LSTM",
    "bigram": "genmodels.bigram:Bigram",
}


def get_family(name: str) -> type[GenerativeModel]:
    if name not in FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, config: dict) -> GenerativeModel:
    return get_family(name).from_config(config)


__all__ = ["FAMILIES", "GenerativeModel", "ModelConfig", "OnnxGraph", "build_model", "get_family"]
