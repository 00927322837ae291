"""Tests for scripts/replay_server.py against the bundled sample corpus, over real loopback HTTP."""

import hashlib
import importlib.util
import json
import sys
import time
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


# ---------------------------------------------------------------------------------------------
# Nightly delta-crawl support: --mutate, period/Oldest/licence filters, enums, downloads,
# Hugging Face RateLimit headers, green/red hosts.

SHARED_ENUMS = ROOT.parent / "shared" / "data" / "civitai-2025" / "enums.json"
TRUTH_LISTS = (
    "new_models",
    "new_model_versions",
    "new_versions",
    "changed_descriptions",
    "changed_images",
    "deleted_models",
    "deleted_versions",
    "hf_changed",
    "hf_deleted",
    "hf_new",
)


@pytest.fixture
def started() -> Iterator[Any]:
    """Factory ``start(**options) -> (server, base_url)``; every server is shut down afterwards."""
    servers: list[Any] = []

    def start(**options: Any) -> tuple[Any, str]:
        server, url = rs.start_server(data_dir=SAMPLE, **options)
        servers.append(server)
        return server, url

    yield start
    for server in servers:
        server.shutdown()


def raw_listing(url: str, sort: str = "Highest Rated", limit: int = 100) -> list[bytes]:
    """Every page body of an nsfw=true listing, as bytes (to compare servers byte for byte)."""
    bodies = []
    response = requests.get(
        f"{url}/api/v1/models", params={"limit": limit, "nsfw": "true", "sort": sort}, timeout=10
    )
    while True:
        assert response.status_code == 200, response.text
        bodies.append(response.content.replace(url.encode(), b"BASE"))
        next_page = response.json()["metadata"].get("nextPage")
        if not next_page:
            return bodies
        response = requests.get(next_page, timeout=10)


def by_id(items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {m["id"]: m for m in items}


def test_mutate_is_deterministic_for_a_seed(started: Any, tmp_path: Path) -> None:
    a, url_a = started(mutate=0.02, mutate_seed=7, truth_path=tmp_path / "a.json")
    b, url_b = started(mutate=0.02, mutate_seed=7, truth_path=tmp_path / "b.json")
    c, url_c = started(mutate=0.02, mutate_seed=8)
    assert a.truth == b.truth == json.loads((tmp_path / "a.json").read_text())
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.truth != c.truth
    assert raw_listing(url_a) == raw_listing(url_b) != raw_listing(url_c)
    vid = a.truth["new_versions"][0]["version_id"]
    assert (
        requests.get(f"{url_a}/api/v1/model-versions/{vid}", timeout=10).content
        == requests.get(f"{url_b}/api/v1/model-versions/{vid}", timeout=10).content
    )
    hf_a = requests.get(f"{url_a}/api/models", params={"full": "true"}, timeout=10).content
    hf_b = requests.get(f"{url_b}/api/models", params={"full": "true"}, timeout=10).content
    assert hf_a.replace(url_a.encode(), b"") == hf_b.replace(url_b.encode(), b"")


def test_mutate_truth_format_and_counts(started: Any) -> None:
    server, _ = started(mutate=0.02, mutate_seed=3)
    truth = server.truth
    assert truth["seed"] == 3 and truth["fraction"] == 0.02
    assert set(truth) == {"seed", "fraction", *TRUTH_LISTS}
    n = max(1, round(0.02 * len(corpus_items())))
    for key in ("new_models", "new_versions", "changed_descriptions", "changed_images", "deleted_models"):
        assert len(truth[key]) == n, key
    touched = [
        *truth["changed_descriptions"],
        *truth["deleted_models"],
        *(e["model_id"] for e in truth["new_versions"]),
        *(e["model_id"] for e in truth["changed_images"]),
    ]
    assert len(touched) == len(set(touched)) == 4 * n  # no model gets two kinds of change
    original = {m["id"]: m for m in corpus_items()}
    assert min(truth["new_models"]) > max(original)
    all_versions = {v["id"] for m in original.values() for v in m["modelVersions"]}
    fresh = [e["version_id"] for e in truth["new_versions"] + truth["new_model_versions"]]
    assert min(fresh) > max(all_versions) and len(set(fresh)) == len(fresh)
    assert truth["deleted_versions"] == sorted(
        v["id"] for mid in truth["deleted_models"] for v in original[mid]["modelVersions"]
    )
    assert len(truth["hf_changed"]) == len(truth["hf_deleted"]) == len(truth["hf_new"]) == 1


def test_every_truth_entry_is_visible_through_the_api(started: Any) -> None:
    _, plain = started()
    server, url = started(mutate=0.02, mutate_seed=3)
    truth = server.truth
    before = by_id(crawl(f"{plain}/api/v1/models", {"limit": 100, "nsfw": "true"}))
    after = by_id(crawl(f"{url}/api/v1/models", {"limit": 100, "nsfw": "true"}))

    for mid in truth["deleted_models"]:
        assert mid in before and mid not in after
        assert requests.get(f"{url}/api/v1/models/{mid}", timeout=10).status_code == 404
    for vid in truth["deleted_versions"]:
        assert requests.get(f"{url}/api/v1/model-versions/{vid}", timeout=10).status_code == 404
        assert requests.get(f"{url}/api/download/models/{vid}", timeout=10).status_code == 404
        assert (
            requests.get(f"{url}/api/v1/images", params={"modelVersionId": vid}, timeout=10).json()["items"]
            == []
        )

    for mid, entry in zip(truth["new_models"], truth["new_model_versions"], strict=True):
        assert entry["model_id"] == mid and mid in after and mid not in before
        assert after[mid]["name"] not in {m["name"] for m in before.values()}
        assert [v["id"] for v in after[mid]["modelVersions"]] == [entry["version_id"]]
        detail = requests.get(f"{url}/api/v1/model-versions/{entry['version_id']}", timeout=10).json()
        assert detail["modelId"] == mid and detail["images"]

    for entry in truth["new_versions"]:
        versions = after[entry["model_id"]]["modelVersions"]
        assert versions[0]["id"] == entry["version_id"]  # newest first
        assert [v["id"] for v in versions[1:]] == [
            v["id"] for v in before[entry["model_id"]]["modelVersions"]
        ]
        assert all(v.get("index", i) == i for i, v in enumerate(versions))
        detail = requests.get(f"{url}/api/v1/model-versions/{entry['version_id']}", timeout=10).json()
        assert detail["modelId"] == entry["model_id"]
        old_hashes = {f["hashes"]["SHA256"] for v in versions[1:] for f in v["files"]}
        assert not old_hashes & {f["hashes"]["SHA256"] for f in detail["files"]}

    for mid in truth["changed_descriptions"]:
        assert after[mid]["description"] != before[mid]["description"]
        assert after[mid]["description"].startswith(before[mid]["description"] or "")

    for entry in truth["changed_images"]:
        version = next(v for v in after[entry["model_id"]]["modelVersions"] if v["id"] == entry["version_id"])
        assert entry["url"] in [img["url"] for img in version["images"]]
        old = next(v for v in before[entry["model_id"]]["modelVersions"] if v["id"] == entry["version_id"])
        assert entry["url"] not in [img["url"] for img in old["images"]]
        listed = requests.get(
            f"{url}/api/v1/images", params={"modelVersionId": entry["version_id"]}, timeout=10
        ).json()["items"]
        assert entry["image_id"] in [img["id"] for img in listed]
        detail = requests.get(f"{url}/api/v1/model-versions/{entry['version_id']}", timeout=10).json()
        assert any(img["url"].endswith(f"/{entry['image_id']}.jpeg") for img in detail["images"])

    # Everything the truth does not name is served exactly as before.
    named = {
        *truth["changed_descriptions"],
        *truth["deleted_models"],
        *truth["new_models"],
        *(e["model_id"] for e in truth["new_versions"] + truth["changed_images"]),
    }
    assert {mid: m for mid, m in after.items() if mid not in named} == {
        mid: m for mid, m in before.items() if mid not in named
    }


def test_mutated_listing_pages_once_per_model_in_every_sort(started: Any) -> None:
    server, url = started(mutate=0.05, mutate_seed=11)
    truth = server.truth
    expected = ({m["id"] for m in corpus_items()} - set(truth["deleted_models"])) | set(truth["new_models"])
    for sort in ("Highest Rated", "Most Downloaded", "Newest", "Oldest"):
        ids = [m["id"] for m in crawl(f"{url}/api/v1/models", {"limit": 7, "sort": sort, "nsfw": "true"})]
        assert len(ids) == len(set(ids)) and set(ids) == expected, sort
    newest = crawl(f"{url}/api/v1/models", {"limit": 20, "sort": "Newest", "nsfw": "true"})
    fresh = set(truth["new_models"]) | {e["model_id"] for e in truth["new_versions"]}
    assert {m["id"] for m in newest[: len(fresh)]} == fresh  # dated the day after the corpus


def test_mutated_hugging_face(started: Any) -> None:
    _, plain = started()
    server, url = started(mutate=0.04, mutate_seed=5)
    truth = server.truth
    before = {
        m["id"]: m for m in requests.get(f"{plain}/api/models", params={"full": "true"}, timeout=10).json()
    }
    after = {
        m["id"]: m for m in requests.get(f"{url}/api/models", params={"full": "true"}, timeout=10).json()
    }
    assert set(after) == (set(before) - set(truth["hf_deleted"])) | set(truth["hf_new"])
    for repo in truth["hf_deleted"]:
        assert requests.get(f"{url}/api/models/{repo}", timeout=10).status_code == 404
        assert requests.get(f"{url}/{repo}/resolve/main/README.md", timeout=10).status_code == 404
    for repo in truth["hf_changed"]:
        assert after[repo]["sha"] != before[repo]["sha"]
        assert after[repo]["lastModified"] > before[repo]["lastModified"]
        old = requests.get(f"{plain}/{repo}/resolve/main/README.md", timeout=10).text
        new = requests.get(f"{url}/{repo}/resolve/main/README.md", timeout=10)
        assert new.text != old and new.text.startswith(old.rstrip("\n"))
        assert new.headers["ETag"] == f'"{after[repo]["sha"]}"'
    for repo in truth["hf_new"]:
        assert requests.get(f"{url}/api/models/{repo}", timeout=10).json()["id"] == repo
        assert requests.get(f"{url}/{repo}/resolve/main/README.md", timeout=10).status_code == 200
    unchanged = set(before) - set(truth["hf_changed"]) - set(truth["hf_deleted"])
    assert all(after[r] == before[r] for r in unchanged)
    expanded = requests.get(
        f"{url}/api/models", params=[("expand", "sha"), ("expand", "lastModified")], timeout=10
    ).json()
    assert all(set(m) <= {"_id", "id", "sha", "lastModified"} for m in expanded)
    assert {m["id"]: m["sha"] for m in expanded} == {r: m["sha"] for r, m in after.items()}


def test_mutate_zero_serves_the_corpus_unchanged(started: Any, tmp_path: Path) -> None:
    _, plain = started()
    server, url = started(mutate=0.0, mutate_seed=9, truth_path=tmp_path / "truth.json")
    assert all(server.truth[key] == [] for key in TRUTH_LISTS)
    assert json.loads((tmp_path / "truth.json").read_text()) == server.truth
    for sort in ("Highest Rated", "Newest"):
        assert raw_listing(url, sort, limit=40) == raw_listing(plain, sort, limit=40)
    hf = [requests.get(f"{u}/api/models", params={"full": "true"}, timeout=10).content for u in (plain, url)]
    assert hf[0] == hf[1]
    with pytest.raises(ValueError):
        rs.make_options(truth_path=tmp_path / "x.json")  # a truth file needs --mutate
    with pytest.raises(ValueError):
        rs.make_options(mutate=0.5)


def last_version_ms(item: dict[str, Any]) -> int:
    return max(rs.parse_time_ms(v.get("publishedAt") or v.get("createdAt")) for v in item["modelVersions"])


def test_period_filters_on_last_version_date(base: str) -> None:
    items = corpus_items()
    clock = max(last_version_ms(m) for m in items)
    counts = {}
    for period, days in (("Day", 1), ("Week", 7), ("Month", 28), ("Year", 365)):
        got = crawl(f"{base}/api/v1/models", {"limit": 50, "nsfw": "true", "period": period})
        counts[period] = len(got)
        assert all(last_version_ms(m) >= clock - (days + 3) * 86_400_000 for m in got), period
        start = rs.period_start(clock, period)
        assert {m["id"] for m in got} == {m["id"] for m in items if last_version_ms(m) >= start}
    everything = crawl(f"{base}/api/v1/models", {"limit": 100, "nsfw": "true", "period": "AllTime"})
    assert 1 <= counts["Day"] <= counts["Week"] <= counts["Month"] <= counts["Year"] < len(everything)
    assert requests.get(f"{base}/api/v1/models", params={"period": "Decade"}, timeout=10).status_code == 400


def test_now_sets_the_period_reference(started: Any) -> None:
    _, url = started(now="2030-01-01T00:00:00Z")
    assert crawl(f"{url}/api/v1/models", {"nsfw": "true", "period": "Year"}) == []


def test_sort_oldest_is_newest_reversed_and_pages(base: str) -> None:
    oldest = [m["id"] for m in crawl(f"{base}/api/v1/models", {"limit": 9, "sort": "Oldest", "nsfw": "true"})]
    newest = [m["id"] for m in crawl(f"{base}/api/v1/models", {"limit": 9, "sort": "Newest", "nsfw": "true"})]
    assert oldest == newest[::-1] and len(oldest) == len(corpus_items())
    first = requests.get(f"{base}/api/v1/models", params={"limit": 3, "sort": "Oldest"}, timeout=10).json()
    when, mid = first["metadata"]["nextCursor"].split("|")
    assert when[:4].isdigit() and mid.isdigit()


def test_licence_filters(base: str) -> None:
    from stylus_docs.normalize.license import normalize_commercial_use

    items = corpus_items()

    def ids(params: dict[str, Any]) -> set[int]:
        return {m["id"] for m in crawl(f"{base}/api/v1/models", {"limit": 100, "nsfw": "true", **params})}

    sell = ids({"allowCommercialUse": "Sell"})
    assert sell and sell == {
        m["id"] for m in items if "Sell" in normalize_commercial_use(m["allowCommercialUse"])
    }
    either = ids({"allowCommercialUse": ["Image", "Rent"]})
    assert either == {
        m["id"] for m in items if {"Image", "Rent"} & set(normalize_commercial_use(m["allowCommercialUse"]))
    }
    none = ids({"allowCommercialUse": "None"})
    assert none and none == {m["id"] for m in items if not normalize_commercial_use(m["allowCommercialUse"])}
    no_credit = ids({"allowNoCredit": "false"})
    assert no_credit and no_credit == {m["id"] for m in items if m["allowNoCredit"] is False}
    assert ids({"allowDerivatives": "true", "allowNoCredit": "true"}) == {
        m["id"] for m in items if m["allowDerivatives"] is True and m["allowNoCredit"] is True
    }
    assert ids({"allowDifferentLicense": "false"}) == {
        m["id"] for m in items if m["allowDifferentLicense"] is False
    }
    for bad in ({"allowCommercialUse": "Free"}, {"allowNoCredit": "maybe"}):
        assert requests.get(f"{base}/api/v1/models", params=bad, timeout=10).status_code == 400


def test_enums(base: str, started: Any, tmp_path: Path) -> None:
    enums = requests.get(f"{base}/api/v1/enums", timeout=10).json()
    assert {"ModelType", "ModelFileType", "BaseModel", "BaseModelType", "ActiveBaseModel"} <= set(enums)
    assert {"LORA", "LoCon", "DoRA"} <= set(enums["ModelType"])
    corpus_bases = {v["baseModel"] for m in corpus_items() for v in m["modelVersions"]}
    assert corpus_bases <= set(enums["BaseModel"])
    assert {"Flux.2 D", "Illustrious", "Pony", "SD 3.5", "Qwen", "Wan Video"} <= set(enums["BaseModel"])
    assert enums["BaseModelType"] == ["Standard", "Inpainting", "Refiner", "Pix2Pix"]
    if SHARED_ENUMS.is_file():
        saved = json.loads(SHARED_ENUMS.read_text())
        assert enums["ModelType"] == saved["ModelType"]
        assert enums["BaseModel"][: len(saved["BaseModel"])] == saved["BaseModel"]
    custom = tmp_path / "enums.json"
    custom.write_text(json.dumps({"ModelType": ["LORA"], "BaseModel": ["Brand New 9"]}))
    _, url = started(enums=custom)
    assert requests.get(f"{url}/api/v1/enums", timeout=10).json() == {
        "ModelType": ["LORA"],
        "BaseModel": ["Brand New 9"],
    }


def test_download_serves_a_valid_safetensors_matching_the_served_hash(started: Any, tmp_path: Path) -> None:
    from stylus_docs.download import AdapterCache, DownloadConfig
    from stylus_docs.safetensors_check import validate_safetensors

    _, url = started(fake_weights=True, mutate=0.02, mutate_seed=1)
    items = crawl(f"{url}/api/v1/models", {"limit": 100})
    version = items[0]["modelVersions"][0]
    primary = next(f for f in version["files"] if f.get("primary"))
    assert version["downloadUrl"] == f"{url}/api/download/models/{version['id']}"
    redirect = requests.get(version["downloadUrl"], allow_redirects=False, timeout=10)
    assert redirect.status_code == 307 and redirect.headers["Location"].startswith(f"{url}/files/")
    assert redirect.headers["Cache-Control"] == "no-store"
    response = requests.get(version["downloadUrl"], timeout=10)
    assert response.status_code == 200
    assert f'filename="{primary["name"]}"' in response.headers["Content-Disposition"]
    digest = hashlib.sha256(response.content).hexdigest().upper()
    assert digest == primary["hashes"]["SHA256"] and digest[:10] == primary["hashes"]["AutoV2"]
    assert abs(primary["sizeKB"] * 1024 - len(response.content)) < 1e-6
    path = tmp_path / "w.safetensors"
    path.write_bytes(response.content)
    assert len(validate_safetensors(path).tensors) == 2
    detail = requests.get(f"{url}/api/v1/model-versions/{version['id']}", timeout=10).json()
    assert detail["files"][0]["hashes"]["SHA256"] == digest
    tail = requests.get(redirect.headers["Location"], headers={"Range": "bytes=10-"}, timeout=10)
    assert tail.status_code == 206 and tail.content == response.content[10:]
    assert requests.get(f"{url}/api/download/models/1", timeout=10).status_code == 404
    # A new version's file downloads and verifies through the project's own cache.
    new_vid = rs_truth_version(url)
    new = requests.get(f"{url}/api/v1/model-versions/{new_vid}", timeout=10).json()
    new_file = next(f for f in new["files"] if f["primary"])
    cache = AdapterCache(tmp_path / "cache", DownloadConfig(backoff=0.01))
    got = cache.fetch(
        {
            "download_url": new["downloadUrl"],
            "sha256": new_file["hashes"]["SHA256"],
            "file_name": new_file["name"],
        }
    )
    assert hashlib.sha256(got.read_bytes()).hexdigest().upper() == new_file["hashes"]["SHA256"]


def test_truncated_download_is_cut_and_resumes(started: Any, tmp_path: Path) -> None:
    from stylus_docs.download import AdapterCache, DownloadConfig

    _, clean = started(fake_weights=True)
    _, url = started(fake_weights=True, fault_rate=1.0, seed=2, faults="truncated", retry_after=0)
    vid = corpus_items()[0]["modelVersions"][0]["id"]
    detail = requests.get(f"{clean}/api/v1/model-versions/{vid}", timeout=10).json()
    primary = next(f for f in detail["files"] if f["primary"])
    cut = requests.get(f"{url}/files/{vid}/{primary['id']}/x.safetensors", timeout=10, stream=True)
    assert int(cut.headers["Content-Length"]) == round(primary["sizeKB"] * 1024)
    with pytest.raises(requests.exceptions.RequestException):
        cut.content  # noqa: B018 - reading the body is the point: the server cuts it off
    cache = AdapterCache(tmp_path / "cache", DownloadConfig(backoff=0.01, resume_attempts=8))
    got = cache.fetch(
        {
            "download_url": detail["downloadUrl"].replace(clean, url),
            "sha256": primary["hashes"]["SHA256"],
            "file_name": primary["name"],
        }
    )
    assert hashlib.sha256(got.read_bytes()).hexdigest().upper() == primary["hashes"]["SHA256"]
    assert requests.get(f"{url}/__stats", timeout=10).json()["faults"]["truncated"] >= 3


def rs_truth_version(url: str) -> int:
    """Newest version id on a server (the first version of the Newest-sorted listing)."""
    first = requests.get(f"{url}/api/v1/models", params={"limit": 1, "sort": "Newest"}, timeout=10).json()
    return first["items"][0]["modelVersions"][0]["id"]


def test_download_without_fake_weights_keeps_corpus_hashes(base: str) -> None:
    items = crawl(f"{base}/api/v1/models", {"limit": 100})
    served = {f["hashes"].get("SHA256") for m in items for v in m["modelVersions"] for f in v["files"]}
    stored = {
        f["hashes"].get("SHA256") for m in corpus_items() for v in m["modelVersions"] for f in v["files"]
    }
    assert served <= stored
    version = items[0]["modelVersions"][0]
    response = requests.get(f"{base}/api/download/models/{version['id']}", timeout=10)
    assert response.status_code == 200 and response.content[8:9] == b"{"


def test_download_redirect_target_needs_no_token(started: Any) -> None:
    _, url = started(require_token="sekrit")
    vid = corpus_items()[0]["modelVersions"][0]["id"]
    assert requests.get(f"{url}/api/download/models/{vid}", timeout=10).status_code == 401
    ok = requests.get(
        f"{url}/api/download/models/{vid}",
        headers={"Authorization": "Bearer sekrit"},
        allow_redirects=False,
        timeout=10,
    )
    assert ok.status_code == 307
    assert requests.get(ok.headers["Location"], timeout=10).status_code == 200  # signed URL: no token
    assert requests.get(f"{url}/__stats", timeout=10).json()["token_requests"] == 1


def test_hf_ratelimit_headers_on_every_answer(base: str) -> None:
    listing = requests.get(f"{base}/api/models", params={"limit": 2}, timeout=10)
    repo = listing.json()[0]["id"]
    info = requests.get(f"{base}/api/models/{repo}", timeout=10)
    missing = requests.get(f"{base}/api/models/nobody/nothing", timeout=10)
    card = requests.get(f"{base}/{repo}/resolve/main/README.md", timeout=10)
    for response, bucket, quota in (
        (listing, "api", 500),
        (info, "api", 500),
        (missing, "api", 500),
        (card, "resolvers", 3000),
    ):
        limit = response.headers["RateLimit"]
        assert limit.startswith(f'"{bucket}";r=') and ";t=" in limit
        assert response.headers["RateLimit-Policy"] == f'"fixed window";"{bucket}";q={quota};w=300'
    assert missing.status_code == 404
    assert "RateLimit" not in requests.get(f"{base}/api/v1/models", params={"limit": 1}, timeout=10).headers


def test_hf_rate_limit_answers_429_then_resets(started: Any) -> None:
    _, url = started(hf_rate_limit=3, hf_rate_window=1.0)
    statuses, remaining = [], []
    for _ in range(4):
        r = requests.get(f"{url}/api/models", params={"limit": 1}, timeout=10)
        statuses.append(r.status_code)
        remaining.append(r.headers["RateLimit"].split(";")[1])
    assert statuses == [200, 200, 200, 429] and remaining == ["r=2", "r=1", "r=0", "r=0"]
    assert r.headers["Retry-After"] == "1" and r.headers["RateLimit-Policy"].endswith(";q=3;w=1")
    assert "error" in r.json()
    repo = requests.get(f"{url}/api/models/{'dogfood-studio/corgi-dog-flux-lora'}", timeout=10)
    assert repo.status_code == 429  # same bucket
    readme = requests.get(f"{url}/dogfood-studio/corgi-dog-flux-lora/resolve/main/README.md", timeout=10)
    assert readme.status_code == 200  # the resolvers bucket is counted apart
    time.sleep(float(r.headers["RateLimit"].rsplit("t=", 1)[1]) + 0.05)
    assert requests.get(f"{url}/api/models", params={"limit": 1}, timeout=10).status_code == 200


def test_green_and_red_hosts(started: Any) -> None:
    green, green_url = started(host_kind="green", mutate=0.02, mutate_seed=4)
    red, red_url = started(host_kind="red", mutate=0.02, mutate_seed=4)
    assert green.truth == red.truth
    red_items = by_id(crawl(f"{red_url}/api/v1/models", {"limit": 100, "nsfw": "true"}))
    green_items = by_id(crawl(f"{green_url}/api/v1/models", {"limit": 100, "nsfw": "true"}))
    nsfw = {mid for mid, m in red_items.items() if not rs.is_sfw_model(m)}
    assert nsfw and set(green_items) == set(red_items) - nsfw
    assert set(green_items) == {m["id"] for m in crawl(f"{red_url}/api/v1/models", {"limit": 100})}
    assert all(
        img.get("nsfwLevel", 1) == 1 and img.get("nsfw", "None") == "None"
        for m in green_items.values()
        for v in m["modelVersions"]
        for img in v["images"]
    )
    mid = min(nsfw)
    vid = red_items[mid]["modelVersions"][0]["id"]
    for path in (f"/api/v1/models/{mid}", f"/api/v1/model-versions/{vid}", f"/api/download/models/{vid}"):
        assert requests.get(red_url + path, allow_redirects=False, timeout=10).status_code in (200, 307)
        assert requests.get(green_url + path, timeout=10).status_code == 404
    everything = requests.get(
        f"{green_url}/api/v1/images", params={"browsingLevel": 31, "limit": 200}, timeout=10
    ).json()
    assert everything["items"] and {img["browsingLevel"] for img in everything["items"]} == {1}
    red_all = requests.get(
        f"{red_url}/api/v1/images", params={"browsingLevel": 31, "limit": 200}, timeout=10
    ).json()
    assert {img["browsingLevel"] for img in red_all["items"]} - {1}


def test_stats_count_requests_per_id(started: Any) -> None:
    _, url = started()
    vid = corpus_items()[0]["modelVersions"][0]["id"]
    requests.get(f"{url}/api/v1/models", params={"limit": 5}, timeout=10)
    requests.get(f"{url}/api/v1/model-versions/{vid}", timeout=10)
    requests.get(f"{url}/api/v1/images", params={"modelVersionId": vid}, timeout=10)
    stats = requests.get(f"{url}/__stats", params={"detail": 1}, timeout=10).json()
    assert stats["endpoints"] == {"models": 1, "model_version": 1, "images": 1}
    assert stats["ids"] == {"model_version": {str(vid): 1}, "images": {str(vid): 1}}
    reset = requests.get(f"{url}/__stats", params={"reset": 1}, timeout=10).json()
    assert reset["requests"] == 0 and reset["endpoints"] == {} and "ids" not in reset


def test_cli_mutate_flags_write_the_same_truth(tmp_path: Path) -> None:
    import subprocess

    truth_file = tmp_path / "truth.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "replay_server.py"),
            "--port",
            "0",
            "--host-kind",
            "green",
            "--mutate",
            "0.02",
            "--mutate-seed",
            "7",
            "--mutate-truth",
            str(truth_file),
            "--fake-weights",
            "--hf-rate-limit",
            "50",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        server, _ = rs.start_server(data_dir=SAMPLE, mutate=0.02, mutate_seed=7)
        try:
            assert json.loads(truth_file.read_text()) == server.truth
        finally:
            server.shutdown()
        hf = requests.get(line.split()[1] + "/api/models", params={"limit": 1}, timeout=10)
        assert hf.headers["RateLimit-Policy"].endswith(";q=50;w=300")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
