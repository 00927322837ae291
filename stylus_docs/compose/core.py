"""Composing a prompt: retrieve → propose (LLM or offline) → enforce the rules → cache.

Output (``schemas/composition.v1.json``)::

    {"prompt": str,
     "release": {"build_id", "docs"},
     "composer": {"name", "model", "prompt_version", "fallback_from", "fallback_reason", "settings"},
     "topics": [{"topic", "adapters": [{"adapter_id", "title", "category", "recommended_weight", "reason"}]}],
     "dropped": [{"reason", "topic", "index", "adapter_id", "detail"}],
     "timings": {"retrieve_s", "propose_s", "enforce_s", "total_s", "cached"}}

Results are cached as JSON files keyed by SHA-256 of (prompt, release build id, composer + model + prompt
version, settings), so a re-run of an evaluation set costs nothing and a new build never reuses a stale
composition.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.compose import llm as llm_mod
from stylus_docs.compose.candidates import CandidateSource
from stylus_docs.compose.offline import VERSION as OFFLINE_VERSION
from stylus_docs.compose.offline import compose_offline, segment
from stylus_docs.compose.rules import enforce
from stylus_docs.compose.types import ComposeSettings
from stylus_docs.errors import FatalError
from stylus_docs.query import Release

log = logging.getLogger(__name__)

CACHE_FORMAT = "composition.v1"


def cache_key(prompt: str, build_id: str, settings: ComposeSettings) -> str:
    """SHA-256 over everything that determines a composition."""
    version = llm_mod.PROMPT_VERSION if settings.composer == "llm" else OFFLINE_VERSION
    payload = {
        "format": CACHE_FORMAT,
        "prompt": prompt,
        "build_id": build_id,
        "composer": settings.composer,
        "model": settings.model if settings.composer == "llm" else None,
        "version": version,
        "settings": settings.cache_fields(),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CompositionCache:
    """JSON files under ``root/<key[:2]>/<key>.json``, written atomically.

    Args:
        root: cache directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """File of ``key``."""
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached composition, or None (a corrupt entry counts as a miss and is overwritten later)."""
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("ignoring corrupt composition cache entry %s", self.path(key))
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store ``value`` under ``key``."""
        atomic_write_text(self.path(key), json.dumps(value, ensure_ascii=False, indent=1))


class Composer:
    """The Stylus composer over one release; reuse it for many prompts (the release is opened once).

    Args:
        docs: release root or build directory.
        settings: composer, model, caps.
        cache_dir: where compositions are cached (None: no cache).
        release: an already opened query release (optional).
        llm_client: an :class:`~stylus_docs.compose.llm.OpenAIComposerClient` to use (optional).
    """

    def __init__(
        self,
        docs: str | os.PathLike[str],
        settings: ComposeSettings | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        release: Release | None = None,
        llm_client: Any | None = None,
    ) -> None:
        self.settings = settings or ComposeSettings()
        self.source = CandidateSource(docs, release=release)
        self.cache = CompositionCache(cache_dir) if cache_dir else None
        self._llm_client = llm_client

    @property
    def build_id(self) -> str:
        """Build id of the release being composed from."""
        return self.source.build_id

    def compose(self, prompt: str) -> dict[str, Any]:
        """Compose ``prompt``; returns the output dict (see module docstring)."""
        prompt = " ".join((prompt or "").split())
        if not prompt:
            raise FatalError("the prompt is empty")
        settings = self.settings
        key = cache_key(prompt, self.build_id, settings)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                hit.setdefault("timings", {})["cached"] = True
                return hit
        t0 = time.perf_counter()
        # The offline composer also searches each phrase: one batch (one embedding call) serves all.
        phrases = segment(prompt) if settings.composer == "offline" else []
        batches = self.source.search_many([prompt, *phrases], settings)
        candidates = self.source.candidates(prompt, settings, hits=batches[0])
        phrase_hits = batches[1:] if phrases else None
        t1 = time.perf_counter()
        composer = {
            "name": settings.composer,
            "model": settings.model if settings.composer == "llm" else None,
            "prompt_version": llm_mod.PROMPT_VERSION if settings.composer == "llm" else OFFLINE_VERSION,
            "fallback_from": None,
            "fallback_reason": None,
            "settings": settings.as_dict(),
        }
        timings: dict[str, Any] = {"retrieve_s": round(t1 - t0, 6)}
        if settings.composer == "llm":
            try:
                proposal, stats = llm_mod.compose_llm(prompt, candidates, settings, client=self._llm_client)
                timings.update(
                    {"llm_requests": stats["requests"], "llm_invalid_answers": stats["invalid_answers"]}
                )
            except (llm_mod.LLMUnavailable, llm_mod.InvalidAnswer) as exc:
                if settings.fallback != "offline":
                    raise
                log.warning("LLM composer failed, falling back to the offline composer: %s", exc)
                proposal = compose_offline(prompt, candidates, settings, self._phrase_search)
                composer.update(
                    name="offline",
                    model=None,
                    prompt_version=OFFLINE_VERSION,
                    fallback_from="llm",
                    fallback_reason=str(exc)[:300],
                )
        else:
            proposal = compose_offline(prompt, candidates, settings, self._phrase_search, phrase_hits)
        t2 = time.perf_counter()
        topics, dropped = enforce(prompt, proposal, candidates, settings)
        t3 = time.perf_counter()
        timings.update(
            {
                "propose_s": round(t2 - t1, 6),
                "enforce_s": round(t3 - t2, 6),
                "total_s": round(t3 - t0, 6),
                "cached": False,
            }
        )
        result = {
            "prompt": prompt,
            "release": {"build_id": self.build_id, "docs": str(self.source.docs)},
            "composer": composer,
            "topics": topics,
            "dropped": dropped,
            "timings": timings,
        }
        # A fallback result is not cached: the next run should try the LLM again.
        if self.cache is not None and composer["fallback_from"] is None:
            self.cache.put(key, result)
        return result

    def _phrase_search(self, texts: list[str], k: int) -> list[list[tuple[str, float, object]]]:
        return self.source.search_many(texts, self.settings, k=k)


def compose(
    prompt: str,
    docs: str | os.PathLike[str],
    settings: ComposeSettings | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """One-shot convenience: open ``docs`` and compose ``prompt`` (see :class:`Composer`)."""
    return Composer(docs, settings, cache_dir=cache_dir).compose(prompt)


def validate_output(result: dict[str, Any]) -> None:
    """Validate a composition against ``composition.v1.json`` (raises ``jsonschema.ValidationError``)."""
    import jsonschema

    schema = dict(llm_mod.load_schema())
    jsonschema.Draft202012Validator(schema).validate(result)
