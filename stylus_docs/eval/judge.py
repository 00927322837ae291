"""The paper's VLM-as-judge (§4.2.3, App. A.5) over any OpenAI-compatible vision chat endpoint.

For every pair of images of one prompt (set A, e.g. Stylus, against set B, e.g. the base model, same
seed) and every criterion (``quality``: visual quality; ``alignment``: how well the image follows the
prompt) the judge is asked twice, with the images in both orders: (A, B) and (B, A). A pair is a win for
A only when both answers prefer A, a loss only when both prefer B, and a tie otherwise: a judge that
always picks the first (or second) image yields ties, not wins, which removes its position bias.

Answers are JSON ``{"winner": "first" | "second" | "tie", "reason": ...}`` (tolerantly parsed: code
fences, prose around the object, a bare word). Each answer is cached on disk as JSON keyed by SHA-256 of
(first image's SHA-256, second image's SHA-256, prompt, criterion, model, temperature, prompt version),
so a re-run asks nothing. Requests have a deadline; 429, 5xx and connection errors are retried with
bounded exponential backoff (or the server's ``Retry-After``); an answer that cannot be parsed is asked
again, then the pair counts as ``failed`` for that criterion. The API key is read from
``OPENAI_API_KEY`` only when the client is built and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tenacity

from stylus_docs.atomic import atomic_write_text
from stylus_docs.errors import FatalError
from stylus_docs.eval.common import ImageItem, open_rgb
from stylus_docs.refine.limits import ServerOrJitterWait, retryable, server_wait
from stylus_docs.release import sha256_file
from stylus_docs.secrets import get_secret, redact

log = logging.getLogger(__name__)

PROMPT_VERSION = "judge-v1"
CRITERIA = ("quality", "alignment")
#: Longest answer parsed (``max_tokens`` bounds an honest server; this bounds any other).
MAX_ANSWER_CHARS = 16 * 1024

SYSTEM = (
    "You are an expert judge of images made by text-to-image models. You compare two images made for "
    "the same prompt and answer only with a JSON object."
)
QUESTION = {
    "quality": (
        "Compare the VISUAL QUALITY of the two images: detail, sharpness, coherent anatomy and objects, "
        "composition, absence of artefacts. Ignore how well they follow the prompt."
    ),
    "alignment": (
        "Compare how well each image follows the PROMPT: every object, attribute, count, relation and "
        "style it asks for is present. Ignore visual quality."
    ),
}
ANSWER_FORMAT = (
    'Answer with JSON only: {"winner": "first" | "second" | "tie", "reason": "<one sentence>"}. '
    'Say "tie" when neither is clearly better.'
)


@dataclass(slots=True)
class JudgeConfig:
    """Settings of the judge.

    Args:
        model: vision chat model (``--model``).
        base_url: endpoint (``--base-url``; None: ``OPENAI_BASE_URL`` or the OpenAI API).
        temperature: sampling temperature (the paper: 0.5).
        max_tokens: answer length bound.
        timeout_s: deadline of one request.
        retries: retries of one request on 429 / 5xx / connection errors.
        answer_retries: re-asks after an answer that cannot be parsed.
        max_side: images are downscaled to at most this many pixels per side before sending.
        concurrency: requests in flight at once.
        cache_dir: answer cache (None: no cache).
        progress: show a progress bar of the questions (stderr).
    """

    model: str = "gpt-4o"
    base_url: str | None = None
    temperature: float = 0.5
    max_tokens: int = 300
    timeout_s: float = 120.0
    retries: int = 4
    answer_retries: int = 1
    max_side: int = 768
    concurrency: int = 4
    cache_dir: str | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.model:
            raise FatalError("--model must name a vision chat model")
        if self.timeout_s <= 0 or self.retries < 0 or self.answer_retries < 0 or self.concurrency < 1:
            raise FatalError("--timeout must be positive, retries non-negative, --concurrency at least 1")
        if self.max_side < 16:
            raise FatalError("--max-side must be at least 16")


def parse_winner(text: str | None) -> str | None:
    """``first`` / ``second`` / ``tie`` from an answer, or None when it names none."""
    if not text:
        return None
    text = text[:MAX_ANSWER_CHARS]
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            obj = json.loads(match.group(0))
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            value = str(obj.get("winner", "")).strip().lower()
            return _norm(value)
    found = re.search(r'"?winner"?\s*[:=]\s*"?(first|second|tie|a|b)\b', text, re.IGNORECASE)
    if found:
        return _norm(found.group(1).lower())
    bare = text.strip().strip(".\"'` ").lower()
    return _norm(bare)


def _norm(value: str) -> str | None:
    return {"first": "first", "a": "first", "second": "second", "b": "second", "tie": "tie"}.get(value)


def verdict(ab: str | None, ba: str | None) -> str:
    """The pair's result for A from the answer with A first (``ab``) and with B first (``ba``):
    ``win`` / ``lose`` only when both orders agree, ``tie`` otherwise, ``failed`` without both answers."""
    if ab is None or ba is None:
        return "failed"
    a_first = {"first": "a", "second": "b", "tie": "tie"}[ab]
    b_first = {"first": "b", "second": "a", "tie": "tie"}[ba]
    if a_first == b_first == "a":
        return "win"
    if a_first == b_first == "b":
        return "lose"
    return "tie"


def pair_images(a: Sequence[ImageItem], b: Sequence[ImageItem]) -> list[tuple[ImageItem, ImageItem]]:
    """Pairs of one prompt and seed (from the sidecars), else of one relative path."""

    def key(it: ImageItem) -> tuple[Any, ...]:
        return ("seed", it.prompt, it.seed) if it.prompt and it.seed is not None else ("path", it.rel)

    by_key = {key(it): it for it in b}
    pairs = [(it, by_key[key(it)]) for it in a if key(it) in by_key]
    if not pairs:
        raise FatalError("judge: no image of --a has a partner in --b (same prompt and seed, or same path)")
    return pairs


class _Cache:
    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) and _norm(str(data.get("winner"))) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        if path is not None:
            atomic_write_text(path, json.dumps(value, ensure_ascii=False))


class Judge:
    """Asks the endpoint, caches the answers and tallies both-order verdicts.

    Args:
        config: the settings.
        client: an ``openai.OpenAI`` client (built from the config when None).
    """

    def __init__(self, config: JudgeConfig, client: Any | None = None) -> None:
        self.config = config
        self.cache = _Cache(config.cache_dir)
        self._client = client
        self._lock = threading.Lock()
        self._images: dict[str, str] = {}
        self.requests = 0
        self.cached = 0

    def client(self) -> Any:
        """The OpenAI client: SDK retries off (retried here, bounded), the config's deadline."""
        if self._client is None:
            import openai

            base = self.config.base_url or os.environ.get("OPENAI_BASE_URL") or None
            key = get_secret("OPENAI_API_KEY")
            if key is None and base is None:
                raise FatalError("OPENAI_API_KEY is not set (or give --base-url for a local endpoint)")
            # Local OpenAI-compatible servers accept any key; the client insists on one.
            self._client = openai.OpenAI(
                api_key=key or "no-key", base_url=base, max_retries=0, timeout=self.config.timeout_s
            )
        return self._client

    def _data_url(self, path: Path) -> str:
        key = str(path)
        with self._lock:
            if key in self._images:
                return self._images[key]
        img = open_rgb(path)
        img.thumbnail((self.config.max_side, self.config.max_side))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        with self._lock:
            if len(self._images) >= 256:  # bounded: an image is asked about 4 times, close together
                self._images.clear()
            self._images[key] = url
        return url

    def messages(self, first: Path, second: Path, prompt: str | None, criterion: str) -> list[dict[str, Any]]:
        """The chat messages of one question (first image, then second)."""
        text = f"Prompt: {prompt or '(unknown)'}\n\n{QUESTION[criterion]}\n\n{ANSWER_FORMAT}"
        return [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "FIRST image:"},
                    {"type": "image_url", "image_url": {"url": self._data_url(first)}},
                    {"type": "text", "text": "SECOND image:"},
                    {"type": "image_url", "image_url": {"url": self._data_url(second)}},
                    {"type": "text", "text": text},
                ],
            },
        ]

    def _send(self, messages: list[dict[str, Any]]) -> str:
        import openai

        with self._lock:
            self.requests += 1
        try:
            resp = self.client().chat.completions.create(
                model=self.config.model,
                messages=messages,
                temperature=self.config.temperature,
                max_tokens=self.config.max_tokens,
            )
        except openai.APIStatusError as exc:
            if retryable(exc):
                raise
            raise FatalError(
                f"judge endpoint refused the request: HTTP {exc.status_code} {redact(str(exc))[:200]}"
            ) from None
        if not resp.choices:
            return ""
        return (resp.choices[0].message.content or "")[:MAX_ANSWER_CHARS]

    def _chat(self, messages: list[dict[str, Any]]) -> str:
        import openai

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.retries + 1),
            wait=ServerOrJitterWait(server_wait, initial_s=0.5, max_s=30.0),
            retry=tenacity.retry_if_exception(retryable),
            reraise=True,
        )
        try:
            return retrying(self._send, messages)
        except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
            raise FatalError(
                f"judge endpoint unavailable after {self.config.retries + 1} tries: {type(exc).__name__}"
            ) from None

    def ask(
        self, first: ImageItem, second: ImageItem, criterion: str, digests: dict[Path, str]
    ) -> str | None:
        """One ordered question (cached): ``first`` / ``second`` / ``tie``, or None when unparsable."""
        cfg = self.config
        blob = json.dumps(
            [
                digests[first.path],
                digests[second.path],
                first.prompt,
                criterion,
                cfg.model,
                cfg.temperature,
                PROMPT_VERSION,
            ]  # fmt: skip
        )
        key = hashlib.sha256(blob.encode("utf-8")).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            with self._lock:
                self.cached += 1
            return _norm(str(hit["winner"]))
        messages = self.messages(first.path, second.path, first.prompt, criterion)
        for _attempt in range(cfg.answer_retries + 1):
            text = self._chat(messages)
            winner = parse_winner(text)
            if winner is not None:
                self.cache.put(key, {"winner": winner, "answer": text, "model": cfg.model})
                return winner
            log.warning("unparsable judge answer (%s, %s): %r", first.rel, criterion, text[:120])
        return None

    def run(self, pairs: Sequence[tuple[ImageItem, ImageItem]],
            criteria: Sequence[str] = CRITERIA) -> dict[str, Any]:  # fmt: skip
        """Judge every pair on every criterion in both orders.

        Returns:
            ``{"model", "n_pairs", "criteria": {c: {"win", "tie", "lose", "failed", "win_rate",
            "win_rate_excluding_ties"}}, "pairs": [{"a", "b", "prompt", c: {"result", "ab", "ba"}}],
            "requests", "cached"}``.
        """
        for c in criteria:
            if c not in CRITERIA:
                raise FatalError(f"unknown criterion {c!r} (choose from {', '.join(CRITERIA)})")
        digests = {it.path: sha256_file(it.path) for pair in pairs for it in pair}
        jobs = [(i, c, order) for i in range(len(pairs)) for c in criteria for order in ("ab", "ba")]

        def one(job: tuple[int, str, str]) -> str | None:
            i, c, order = job
            a, b = pairs[i]
            return self.ask(a, b, c, digests) if order == "ab" else self.ask(b, a, c, digests)

        bar = None
        if self.config.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="judge", unit="question", leave=False)

        def counted(job: tuple[int, str, str]) -> str | None:
            got = one(job)
            if bar is not None:
                bar.update(1)
            return got

        try:
            with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
                answers = dict(zip(jobs, pool.map(counted, jobs), strict=True))
        finally:
            if bar is not None:
                bar.close()
        rows: list[dict[str, Any]] = []
        tally = {c: {"win": 0, "tie": 0, "lose": 0, "failed": 0} for c in criteria}
        for i, (a, b) in enumerate(pairs):
            row: dict[str, Any] = {"a": str(a.path), "b": str(b.path), "prompt": a.prompt}
            for c in criteria:
                ab, ba = answers[(i, c, "ab")], answers[(i, c, "ba")]
                result = verdict(ab, ba)
                tally[c][result] += 1
                row[c] = {"result": result, "ab": ab, "ba": ba}
            rows.append(row)
        summary: dict[str, Any] = {}
        for c, t in tally.items():
            judged = t["win"] + t["tie"] + t["lose"]
            decided = t["win"] + t["lose"]
            summary[c] = {
                **t,
                "win_rate": t["win"] / judged if judged else None,
                "win_rate_excluding_ties": t["win"] / decided if decided else None,
            }
        return {
            "model": self.config.model,
            "prompt_version": PROMPT_VERSION,
            "n_pairs": len(pairs),
            "criteria": summary,
            "pairs": rows,
            "requests": self.requests,
            "cached": self.cached,
        }
