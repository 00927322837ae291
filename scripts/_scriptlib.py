"""Small helpers the scripts share (run as ``python scripts/NAME.py``, so this folder is on sys.path)."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_module(name: str, path: Path) -> ModuleType:
    """Import a script or test helper by file path (``scripts/replay_server.py``, ``tests/fakes/…``).

    Registered in ``sys.modules`` first: dataclasses look their module up while the class is built.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def replay_server() -> ModuleType:
    """``scripts/replay_server.py`` (the loopback Civitai / Hugging Face stand-in)."""
    return load_module("replay_server", ROOT / "scripts" / "replay_server.py")


def free_port() -> int:
    """A loopback port free right now (servers restarted on it keep their URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
