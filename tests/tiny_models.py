"""Tiny diffusers models for tests: built once per session by scripts/make_tiny_models.py.

Use the ``tiny_models`` fixture (session scope) or call :func:`get_tiny_models` with a directory::

    def test_x(tiny_models):
        pipe_dir = tiny_models.pipeline          # StableDiffusionPipeline.save_pretrained layout
        tiny_models.lora_diffusers, tiny_models.lora_kohya, tiny_models.lora_broken
        tiny_models.sha256["tiny-kohya.safetensors"]

Conftest-free: import the fixture into a test module with
``from tests.tiny_models import tiny_models  # noqa: F401``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_maker() -> Any:
    """Import scripts/make_tiny_models.py by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "make_tiny_models", ROOT / "scripts" / "make_tiny_models.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("make_tiny_models", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def get_tiny_models(out: str | os.PathLike[str], seed: int = 0) -> Any:
    """Build the tiny pipeline and LoRA files under ``out`` (returns ``TinyModels``)."""
    return load_maker().make_tiny_models(out, seed=seed)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Session-wide tiny models (pipeline + diffusers, Kohya and broken LoRA files)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return get_tiny_models(tmp_path_factory.mktemp("tiny_models"))
