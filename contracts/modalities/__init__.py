"""Modalities: one module per kind of data (DESIGN.md, "Modalities").

A modality module knows how its stored arrays become model inputs and back, what a per-sample summary
for validation looks like and which expectations apply to it, how serving encodes shards and previews,
and its sample key in the npz files. Nothing outside a modality module and the families special-cases
one. Each module exposes the names listed in ``REQUIRED``; ``get_modality(name)`` imports it lazily.

Adding a modality: write ``contracts/modalities/<name>.py`` with those names and add one line to
``MODALITIES`` (and ``contracts.data.MODALITIES``).
"""
from __future__ import annotations

import importlib
from types import ModuleType

from contracts.errors import ConfigError

MODALITIES: dict[str, str] = {
    "image": "contracts.modalities.image",
    "tokens": "contracts.modalities.tokens",
}

REQUIRED = ("SAMPLE_KEY", "to_model", "from_model", "summary_table", "expectations", "validation_thresholds",
            "write_preview", "write_files", "check_stored", "FILE_SUFFIX", "FILES_DIR", "PREVIEW_NAME",
            "SHARD_SUFFIX", "shard_bytes", "read_shard")


def get_modality(name: str) -> ModuleType:
    """The module of modality `name`; ConfigError naming the known ones."""
    if name not in MODALITIES:
        raise ConfigError("modality", f"{name!r} is not implemented; known: {', '.join(sorted(MODALITIES))}")
    module = importlib.import_module(MODALITIES[name])
    missing = [attr for attr in REQUIRED if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"modality module {module.__name__} lacks {', '.join(missing)}")
    return module
