"""Composing a prompt: retrieve → propose (LLM or offline) → enforce the rules → cache.

Output (``schemas/composition.v1.json``)::

    {"prompt": str,
     "release": {"build_id", "docs"},
     "composer": {"name", "model", "prompt_version", "fallback_from", "fallback_reason", "settings"},
     "base_model": str | None, "base_family": str | None,
     "base_family_from": "base_model" | "pipeline" | "candidates" | "none",
     "local": {"dir", "adapters"} | None,
     "topics": [{"topic", "adapters": [{"adapter_id", "title", "category", "recommended_weight", "reason"}]}],
     "dropped": [{"reason", "topic", "index", "adapter_id", "detail"}],
     "timings": {"retrieve_s", "propose_s", "enforce_s", "total_s", "cached"}}

One base-model family per composition (:mod:`stylus_docs.compose.families`): ``--base-model``, else the
generation pipeline's, else every family retrieved for the prompt is composed offline and the strongest
(the sum over topics of the best admissible adapter's score) wins; the LLM composer then sees only that
family's candidates. ``--local DIR`` restricts the candidates to the adapters linked in DIR.

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
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stylus_docs.atomic import atomic_write_text
from stylus_docs.compose import llm as llm_mod
from stylus_docs.compose.candidates import CandidateSource, Hits
from stylus_docs.compose.families import resolve_family
from stylus_docs.compose.offline import VERSION as OFFLINE_VERSION
from stylus_docs.compose.offline import compose_offline, search_texts
from stylus_docs.compose.rules import PromptWords, character_allowed, enforce
from stylus_docs.compose.types import Candidate, ComposeSettings, RawTopic
from stylus_docs.errors import FatalError
from stylus_docs.query import Release

log = logging.getLogger(__name__)

CACHE_FORMAT = "composition.v1-r2"


def cache_key(
    prompt: str, build_id: str, settings: ComposeSettings, extra: dict[str, Any] | None = None
) -> str:
    """SHA-256 over everything that determines a composition (``extra``: inputs beyond the settings,
    such as the set of linked adapters of ``--local``)."""
    version = llm_mod.PROMPT_VERSION if settings.composer == "llm" else OFFLINE_VERSION
    payload = {
        "format": CACHE_FORMAT,
        "prompt": prompt,
        "build_id": build_id,
        "composer": settings.composer,
        "model": settings.model if settings.composer == "llm" else None,
        "version": version,
        "settings": settings.cache_fields(),
        "extra": extra or {},
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


@dataclass(slots=True)
class _Plan:
    """One family's candidates and (offline) proposal for a prompt."""

    family: str | None
    candidates: list[Candidate]
    hits: list[Hits]
    proposal: list[RawTopic] | None = None
    strength: float = 0.0
    propose_s: float = 0.0


class Composer:
    """The Stylus composer over one release; reuse it for many prompts (the release is opened once).

    Args:
        docs: release root or build directory.
        settings: composer, model, caps, base model, local library.
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
        self.local: dict[str, Path] | None = None
        if self.settings.local:
            from stylus_docs.library import local_weights

            self.local = local_weights(self.settings.local)
            if not self.local:
                log.warning("no linked adapter in %s: every composition will be empty", self.settings.local)

    @property
    def build_id(self) -> str:
        """Build id of the release being composed from."""
        return self.source.build_id

    def requested_family(self) -> tuple[str | None, str, str | None]:
        """``(family, where it came from, base model name)`` asked for by the settings; family None when
        the composer is to choose (``base_family_from = "candidates"``)."""
        s = self.settings
        if s.base_model:
            return resolve_family(s.base_model), "base_model", s.base_model
        if s.pipeline_base_model:
            return resolve_family(s.pipeline_base_model), "pipeline", s.pipeline_base_model
        return None, "candidates", None

    def _key(self, prompt: str) -> str:
        extra = None
        if self.local is not None:
            blob = "\n".join(sorted(self.local)).encode("utf-8")
            extra = {"local_adapters": hashlib.sha256(blob).hexdigest()}
        return cache_key(prompt, self.build_id, self.settings, extra)

    def compose(self, prompt: str) -> dict[str, Any]:
        """Compose ``prompt``; returns the output dict (see module docstring)."""
        prompt = " ".join((prompt or "").split())
        if not prompt:
            raise FatalError("the prompt is empty")
        settings = self.settings
        key = self._key(prompt)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                hit.setdefault("timings", {})["cached"] = True
                return hit
        t0 = time.perf_counter()
        names = self.source.cards.names
        family, family_from, base_model = self.requested_family()
        plans = self._plans(prompt, family)
        if plans:
            plan = max(plans, key=lambda p: p.strength)  # the first (most retrieved) family wins ties
        else:  # nothing retrieved at all (an empty --local library): topics without adapters
            empty = [[] for _ in search_texts(prompt)]
            plan = _Plan(family, [], [], proposal=compose_offline(prompt, [], settings, phrase_hits=empty))
        if family is None:
            family = plan.family
            family_from = "candidates" if family is not None else "none"
        candidates = plan.candidates
        t1 = time.perf_counter()
        # Offline proposals made while choosing the family count as proposing, not retrieving.
        planning = sum(p.propose_s for p in plans)
        composer = {
            "name": settings.composer,
            "model": settings.model if settings.composer == "llm" else None,
            "prompt_version": llm_mod.PROMPT_VERSION if settings.composer == "llm" else OFFLINE_VERSION,
            "fallback_from": None,
            "fallback_reason": None,
            "settings": settings.as_dict(),
        }
        timings: dict[str, Any] = {"retrieve_s": round(t1 - t0 - planning, 6)}
        if settings.composer == "llm":
            # The LLM sees only what it may pick: the family's candidates minus characters the prompt
            # does not name (re-indexed); its answer is validated against the same rules afterwards.
            pw = PromptWords.of(prompt)
            shown = [c for c in candidates if character_allowed(c, pw, settings, names)]
            candidates = [replace(c, index=i) for i, c in enumerate(shown)]
            try:
                proposal, stats = llm_mod.compose_llm(prompt, candidates, settings, client=self._llm_client)
                timings.update(
                    {"llm_requests": stats["requests"], "llm_invalid_answers": stats["invalid_answers"]}
                )
            except (llm_mod.LLMUnavailable, llm_mod.InvalidAnswer) as exc:
                if settings.fallback != "offline":
                    raise
                log.warning("LLM composer failed, falling back to the offline composer: %s", exc)
                candidates = plan.candidates
                proposal = plan.proposal or self._offline(prompt, plan, names)
                composer.update(
                    name="offline",
                    model=None,
                    prompt_version=OFFLINE_VERSION,
                    fallback_from="llm",
                    fallback_reason=str(exc)[:300],
                )
        else:
            proposal = plan.proposal if plan.proposal is not None else self._offline(prompt, plan, names)
        t2 = time.perf_counter()
        topics, dropped = enforce(prompt, proposal, candidates, settings, family=family, names=names)
        t3 = time.perf_counter()
        timings.update(
            {
                "propose_s": round(t2 - t1 + planning, 6),
                "enforce_s": round(t3 - t2, 6),
                "total_s": round(t3 - t0, 6),
                "cached": False,
            }
        )
        if base_model is None:
            base_model = _common_base_model(topics, candidates)
        result = {
            "prompt": prompt,
            "release": {"build_id": self.build_id, "docs": str(self.source.docs)},
            "composer": composer,
            "base_model": base_model,
            "base_family": family,
            "base_family_from": family_from,
            "local": None
            if self.local is None
            else {"dir": str(settings.local), "adapters": len(self.local)},
            "topics": topics,
            "dropped": dropped,
            "timings": timings,
        }
        # A fallback result is not cached: the next run should try the LLM again.
        if self.cache is not None and composer["fallback_from"] is None:
            self.cache.put(key, result)
        return result

    def _plans(self, prompt: str, family: str | None) -> list[_Plan]:
        """The candidates (and offline proposal) of the requested family, or of every family retrieved
        for the prompt when none was requested, each with its strength (the sum over topics of the
        score of the topic's first adapter that passes the rules)."""
        settings = self.settings
        source = self.source
        auto = family is None
        offline_needed = settings.composer == "offline" or auto
        texts = [prompt, *(search_texts(prompt) if offline_needed else [])]
        vectors = source.score(texts)
        base = source.base_mask(settings, None if self.local is None else set(self.local))
        if auto:
            families = source.families_among(source.rank(vectors[:1], settings.top_k, base)[0])
        else:
            families = [family]
        plans: list[_Plan] = []
        names = source.cards.names
        for fam in families:
            fam_mask = source.family_mask(fam)
            mask = fam_mask if base is None else (base & fam_mask)
            hits = source.rank(vectors, settings.top_k, mask)
            plan = _Plan(fam, source.candidates(prompt, settings, hits=hits[0]), hits)
            if offline_needed:
                tp = time.perf_counter()
                plan.proposal = self._offline(prompt, plan, names)
                if auto and len(families) > 1:
                    plan.strength = _strength(prompt, plan, settings, names)
                plan.propose_s = time.perf_counter() - tp
            plans.append(plan)
        return plans

    def _offline(self, prompt: str, plan: _Plan, names: Any) -> list[RawTopic]:
        """The offline proposal over ``plan``'s candidates (phrase hits from the plan when it has them)."""
        settings = self.settings
        pw = PromptWords.of(prompt)
        phrase_hits = plan.hits[1:] if len(plan.hits) > 1 else None
        if phrase_hits is None:
            mask = self.source.base_mask(settings, None if self.local is None else set(self.local))
            fam = self.source.family_mask(plan.family)
            mask = fam if mask is None else (mask & fam)
            phrase_hits = self.source.rank(self.source.score(search_texts(prompt)), settings.top_k, mask)
        return compose_offline(
            prompt,
            plan.candidates,
            settings,
            phrase_hits=phrase_hits,
            eligible=lambda c: (
                (settings.include_nsfw or not c.nsfw) and character_allowed(c, pw, settings, names)
            ),
        )

    def _phrase_search(self, texts: list[str], k: int) -> list[list[tuple[str, float, object]]]:
        return self.source.search_many(texts, self.settings, k=k)


def _strength(prompt: str, plan: _Plan, settings: ComposeSettings, names: Any) -> float:
    score_of = {(t.topic, by.index): by.score or 0.0 for t in plan.proposal or [] for by in t.adapters}
    by_id = {c.adapter_id: c.index for c in plan.candidates}
    topics, _dropped = enforce(prompt, plan.proposal or [], plan.candidates, settings, names=names)
    total = 0.0
    for topic in topics:
        if topic["adapters"]:
            total += score_of.get((topic["topic"], by_id[topic["adapters"][0]["adapter_id"]]), 0.0)
    return round(total, 6)


def _common_base_model(topics: list[dict[str, Any]], candidates: list[Candidate]) -> str | None:
    """The most common base-model name of the chosen adapters, else of the candidates (first seen wins
    ties)."""
    by_id = {c.adapter_id: c for c in candidates}
    chosen = [
        by_id[a["adapter_id"]].base_model for t in topics for a in t["adapters"] if a["adapter_id"] in by_id
    ]
    pool = [b for b in chosen if b] or [c.base_model for c in candidates if c.base_model]
    if not pool:
        return None
    counts = Counter(pool)
    return max(pool, key=lambda b: (counts[b], -pool.index(b)))


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
