"""Tests for scripts/replay_server.py against the bundled sample corpus, over real loopback HTTP."""

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"


def load_module() -> ModuleType:
    """Import the script by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("replay_server", ROOT / "scripts" / "replay_server.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("replay_server", module)
    spec.loader.exec_module(module)
    return module


rs = load_module()


def corpus_items() -> list[dict[str, Any]]:
    with (SAMPLE / "civitai" / "models.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server, url = rs.start_server(data_dir=SAMPLE)
    yield url
    server.shutdown()


def crawl(url: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Follow metadata.nextPage until it disappears."""
    items: list[dict[str, Any]] = []
    response = requests.get(url, params=params, timeout=10)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        next_page = body["metadata"].get("nextPage")
        if not next_page:
            return items
        response = requests.get(next_page, timeout=10)


@pytest.mark.parametrize("sort", ["Highest Rated", "Most Downloaded", "Newest"])
def test_cursor_paging_returns_every_sfw_model_once(base: str, sort: str) -> None:
    expected = {m["id"] for m in corpus_items() if not m["nsfw"]}
    items = crawl(f"{base}/api/v1/models", {"limit": 7, "sort": sort})
    ids = [m["id"] for m in items]
    assert len(ids) == len(set(ids))
    assert set(ids) == expected


def test_query_uses_offset_cursor_and_finds_concepts(base: str) -> None:
    corgis = crawl(f"{base}/api/v1/models", {"query": "corgi", "limit": 1})
    assert len(corgis) >= 2 and all("corgi" in m["name"].lower() for m in corgis)
    graffiti = requests.get(f"{base}/api/v1/models", params={"query": "graffiti"}, timeout=10).json()
    assert graffiti["items"]


def test_page_cap_limit_and_bad_cursor(base: str) -> None:
    r = requests.get(f"{base}/api/v1/models", params={"page": 11, "limit": 100}, timeout=10)
    assert r.status_code == 429
    assert r.json() == {"error": "You've requested too many pages, please use cursors instead"}
    assert "Retry-After" not in r.headers
    # page itself is ignored: page 2 returns the first window
    first = requests.get(f"{base}/api/v1/models", params={"limit": 5}, timeout=10).json()
    page2 = requests.get(f"{base}/api/v1/models", params={"limit": 5, "page": 2}, timeout=10).json()
    assert [m["id"] for m in first["items"]] == [m["id"] for m in page2["items"]]
    assert requests.get(f"{base}/api/v1/models", params={"limit": 101}, timeout=10).status_code == 400
    assert requests.get(f"{base}/api/v1/models", params={"cursor": "1|2"}, timeout=10).status_code == 400


def test_nsfw_filter(base: str) -> None:
    sfw = crawl(f"{base}/api/v1/models", {"limit": 100})
    everything = crawl(f"{base}/api/v1/models", {"limit": 100, "nsfw": "true"})
    assert len(everything) == len(corpus_items())
    assert not any(m["nsfw"] for m in sfw)
    assert any(m["nsfw"] for m in everything)
    for m in sfw:
        for v in m["modelVersions"]:
            for img in v["images"]:
                assert img.get("nsfwLevel", 1) == 1 and img.get("nsfw", "None") == "None"


def test_types_and_base_model_filters(base: str) -> None:
    items = crawl(f"{base}/api/v1/models", {"types": ["LoCon", "DoRA"], "limit": 50})
    assert items and {m["type"] for m in items} <= {"LoCon", "DoRA"}
    sdxl = crawl(f"{base}/api/v1/models", {"baseModels": "SDXL 1.0", "limit": 50})
    assert sdxl
    assert all(v["baseModel"] == "SDXL 1.0" for m in sdxl for v in m["modelVersions"])


def test_meta_stripped_in_models_but_present_in_versions(base: str) -> None:
    items = crawl(f"{base}/api/v1/models", {"limit": 100})
    images = [img for m in items for v in m["modelVersions"] for img in v["images"]]
    assert images and not any("meta" in img for img in images)
    version_id = items[0]["modelVersions"][0]["id"]
    version = requests.get(f"{base}/api/v1/model-versions/{version_id}", timeout=10).json()
    assert version["modelId"] == items[0]["id"]
    assert version["air"].startswith("urn:air:") and version["air"].endswith(f"@{version_id}")
    assert 1 <= len(version["images"]) <= 10
    assert all(img["meta"]["prompt"] for img in version["images"])
    assert all(isinstance(f["primary"], bool) for f in version["files"])
    missing = requests.get(f"{base}/api/v1/model-versions/1", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "Model not found"}
    no_meta = requests.get(f"{base}/api/v1/images", params={"modelVersionId": version_id}, timeout=10).json()
    with_meta = requests.get(
        f"{base}/api/v1/images", params={"modelVersionId": version_id, "withMeta": "true"}, timeout=10
    ).json()
    assert all(img["meta"] is None for img in no_meta["items"])
    assert with_meta["items"] and all(img["meta"] for img in with_meta["items"])


def test_era_2023_keeps_meta_and_totals() -> None:
    server, url = rs.start_server(data_dir=SAMPLE, era=2023)
    try:
        body = requests.get(f"{url}/api/v1/models", params={"limit": 100}, timeout=10).json()
        assert "totalItems" in body["metadata"]
        assert any("meta" in img for m in body["items"] for v in m["modelVersions"] for img in v["images"])
    finally:
        server.shutdown()


def test_hf_link_paging_and_files(base: str) -> None:
    seen: list[str] = []
    response = requests.get(
        f"{base}/api/models", params={"filter": "lora", "limit": 4, "full": "true"}, timeout=10
    )
    while True:
        assert response.status_code == 200
        page = response.json()
        assert isinstance(page, list) and len(page) <= 4
        seen.extend(m["id"] for m in page)
        if "next" not in response.links:
            break
        response = requests.get(response.links["next"]["url"], timeout=10)
    assert len(seen) == len(set(seen)) >= 20
    both = requests.get(
        f"{base}/api/models", params=[("filter", "lora"), ("filter", "flux")], timeout=10
    ).json()
    assert both and all("flux" in m["tags"] for m in both)
    repo = seen[0]
    card = requests.get(f"{base}/{repo}/resolve/main/README.md", timeout=10)
    assert card.status_code == 200 and card.text.startswith("---") and "## Trigger words" in card.text
    png = requests.get(f"{base}/{repo}/resolve/main/images/example_1.png", timeout=10)
    assert png.headers["Content-Type"] == "image/png" and png.content.startswith(b"\x89PNG")


def test_image_urls_map_to_pngs(base: str) -> None:
    url = "https://image.civitai.com/xG1nkqKTMzGDvpLrqFT7WA/abc/width=450/1.jpeg"
    proxied = requests.get(f"{base}/image-proxy", params={"url": url}, timeout=10)
    direct = requests.get(f"{base}/img/xG1nkqKTMzGDvpLrqFT7WA/abc/width=450/1.jpeg", timeout=10)
    assert proxied.content == direct.content and direct.content.startswith(b"\x89PNG")


def test_require_token() -> None:
    server, url = rs.start_server(data_dir=SAMPLE, require_token="sekrit")
    try:
        r = requests.get(f"{url}/api/v1/models", params={"limit": 1}, timeout=10)
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        ok = requests.get(
            f"{url}/api/v1/models",
            params={"limit": 1},
            headers={"Authorization": "Bearer sekrit"},
            timeout=10,
        )
        assert ok.status_code == 200
    finally:
        server.shutdown()


def fetch_with_retries(url: str, params: dict[str, Any], tries: int = 20) -> tuple[dict[str, Any], set[str]]:
    """Minimal robust client: retry on every failure kind the server can inject."""
    seen: set[str] = set()
    for _ in range(tries):
        try:
            r = requests.get(url, params=params, timeout=5)
        except requests.ConnectionError:
            seen.add("drop")
            continue
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "0"
            seen.add("429")
            continue
        if r.status_code >= 500:
            seen.add("5xx")
            continue
        if not r.headers.get("Content-Type", "").startswith("application/json"):
            seen.add("html")
            continue
        try:
            return r.json(), seen
        except ValueError:
            seen.add("truncated")
    raise AssertionError("never succeeded")


def test_fault_injection_kinds_and_eventual_success() -> None:
    server, url = rs.start_server(data_dir=SAMPLE, fault_rate=0.5, seed=7, retry_after=0)
    try:
        seen: set[str] = set()
        params: dict[str, Any] = {"limit": 20}
        ids: list[int] = []
        while True:
            body, kinds = fetch_with_retries(f"{url}/api/v1/models", params)
            seen |= kinds
            ids.extend(m["id"] for m in body["items"])
            if "nextCursor" not in body["metadata"]:
                break
            params = {"limit": 20, "cursor": body["metadata"]["nextCursor"]}
        for _ in range(30):
            seen |= fetch_with_retries(f"{url}/api/v1/models", {"limit": 1})[1]
        assert len(ids) == len(set(ids)) == sum(1 for m in corpus_items() if not m["nsfw"])
        stats = requests.get(f"{url}/__stats", timeout=5).json()
        assert set(stats["faults"]) == set(rs.FAULT_KINDS)
        assert seen == set(rs.FAULT_KINDS)
    finally:
        server.shutdown()


def test_fault_rate_one_still_lets_retries_through() -> None:
    server, url = rs.start_server(data_dir=SAMPLE, fault_rate=1.0, seed=3, faults="5xx", retry_after=0)
    try:
        statuses = [
            requests.get(f"{url}/api/v1/models", params={"limit": 1}, timeout=5).status_code
            for _ in range(rs.MAX_CONSECUTIVE_FAULTS + 1)
        ]
        assert statuses[-1] == 200 and all(s >= 500 for s in statuses[:-1])
    finally:
        server.shutdown()


def test_cli_prints_ready_line(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "replay_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        r = requests.get(line.split()[1] + "/api/v1/models", params={"limit": 1}, timeout=10)
        assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
