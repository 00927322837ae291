"""Shared fixtures: the replay server (scripts/replay_server.py) on loopback, the fixture release."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def load_replay_module() -> Any:
    """Import scripts/replay_server.py by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("replay_server", ROOT / "scripts" / "replay_server.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def replay_server() -> Iterator[Callable[..., str]]:
    """Factory: ``start(**options) -> base_url``; every server started is shut down after the test."""
    module = load_replay_module()
    servers = []

    def start(**options: Any) -> str:
        server, base_url = module.start_server(**options)
        servers.append(server)
        return base_url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh copy of the fixture release (tests/release_fixture.py) per test module; modules that need
    other rows define their own ``docs``."""
    from tests.release_fixture import write_release

    root = tmp_path_factory.mktemp("rel") / "docs"
    write_release(root)
    return root
