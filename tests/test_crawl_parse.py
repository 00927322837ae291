"""Every saved real API item (2023 and 2025 eras) passes the crawler's validation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from stylus_docs.sources import civitai

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not SHARED.exists(), reason="../shared/data is absent")


def test_every_2023_item_validates() -> None:
    total = versions = 0
    ids = set()
    for name in ("lora_normal.dev.jsonl.gz", "lora_nsfw.dev.jsonl.gz"):
        path = SHARED / "civitai-2023" / name
        if not path.exists():
            pytest.skip(f"{path} is absent")
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                item = json.loads(line)
                ids.add(civitai.model_id(item))
                vids, problems = civitai.version_ids(item)
                assert not problems and vids
                total += 1
                versions += len(vids)
    assert total == len(ids) == 5031
    assert versions > total


def test_2025_models_versions_and_pages() -> None:
    root = SHARED / "civitai-2025"
    for name in ("civitai_api_model_by_modelId.json", "model_1580878.json"):
        item = json.loads((root / name).read_text())
        assert civitai.model_id(item) == item["id"]
        vids, problems = civitai.version_ids(item)
        assert vids and not problems
        page = civitai.page_from_body({"items": [item], "metadata": {"nextCursor": "1|2"}}, None)
        assert page.next == "1|2" and page.items == [item]
    version = json.loads((root / "version.json").read_text())
    assert isinstance(version["id"], int) and isinstance(version.get("images"), list)
