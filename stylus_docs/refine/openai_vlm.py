"""VLM refiner over any OpenAI-compatible chat endpoint, run through Beam ``RunInference``.

Flow per adapter: :func:`build_request` (card text + up to N example images fetched with size and pixel
limits, sent as data URLs; images that cannot be fetched are skipped) → :class:`OpenAIRefineHandler`
(a Beam ``RemoteModelHandler`` whose ``request(batch)`` runs the batch's adapters on a thread pool of
``concurrency`` threads; each request goes through the process-wide :class:`~.limits.RateLimiter` of
the endpoint and bounded per-request retries with backoff — the SDK's and Beam's own retries are off,
only 429/5xx/connection errors are retried) → :class:`RefineOutcome`, with token usage and request
counts. Each answer is appended to the :class:`~.journal.AnswerJournal` as soon as it arrives.

Answers are asked for with ``response_format={"type": "json_schema", ...}``; a server that rejects that
parameter is asked again without it and the answer is parsed tolerantly (code fences, prose around the
object). An answer that is not valid JSON or violates ``schemas/refinement.v1.json`` is re-asked up to
``validation_attempts`` times and then becomes a failed outcome with reason ``invalid_json`` or
``schema_violation`` (a dead letter). A 4xx other than 429 is a failed outcome ``http_<status>``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import requests
import tenacity
from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler

from stylus_docs import progress, safe_json
from stylus_docs.errors import FatalError
from stylus_docs.records import AdapterCard, Refinement
from stylus_docs.refine.journal import AnswerJournal
from stylus_docs.refine.limits import (
    MAX_SERVER_WAIT_S,
    RateLimiter,
    ServerOrJitterWait,
    retryable,
    server_wait,
    shared_limiter,
)
from stylus_docs.schemas import load_schema, validation_errors
from stylus_docs.secrets import get_secret, redact, strip_token_params
from stylus_docs.sources import DEFAULT_IMAGE_HOSTS

logger = logging.getLogger(__name__)

OPENAI_REFINER_NAME = "openai"
#: Bump with the prompt file: cached answers of another version are not reused.
OPENAI_REFINER_VERSION = "v2"
#: v2: rendered with/without pairs come first, labelled as such (v1 saw only the creators' examples).
PROMPT_FILE = "refine_v2.md"
_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
#: Outcome reason of a request the endpoint refused for its credentials (401/403); fatal for a build.
UNAUTHORIZED = "unauthorized"
#: Longest answer parsed. ``max_tokens`` bounds an honest server; this bounds any other (the JSON
#: asked for is a few hundred characters).
MAX_ANSWER_CHARS = 64 * 1024


def load_prompt(name: str = PROMPT_FILE) -> str:
    """The system prompt, shipped as package data (``stylus_docs/prompts``)."""
    return resources.files("stylus_docs.prompts").joinpath(name).read_text(encoding="utf-8")


@dataclass(slots=True)
class VLMConfig:
    """Settings of the VLM refiner.

    Args:
        model: chat model name (``--refiner-model``).
        base_url: endpoint; ``None`` → ``OPENAI_BASE_URL`` or the OpenAI default.
        max_images: example images sent per adapter (the paper used up to 10).
        max_image_bytes: images larger than this are skipped (the paper's OpenAI path: 2 MB).
        max_pixels: decoded-size limit (decompression bombs are refused).
        image_timeout_s: per-image timeout of one connect or socket read.
        request_timeout_s: per-request timeout of the chat call.
        num_retries: retries of one request on 429/5xx/connection errors (per request, inside the
            handler; exponential backoff with full jitter, or the server's ``Retry-After``).
        throttle_delay_secs: Beam's client-side throttling delay.
        validation_attempts: tries per adapter when answers fail JSON/schema validation.
        use_response_format: ask for ``json_schema`` output (falls back when the server refuses).
        allowed_image_hosts: hosts example images may be fetched from, redirects included (entries
            ``host``, ``host:port`` or ``*.domain``; default Civitai's image CDN and the Hugging Face
            hosts, :data:`stylus_docs.sources.DEFAULT_IMAGE_HOSTS`). Empty: only ``image_api_hosts``.
        image_api_hosts: hosts of the configured catalogue APIs (e.g. the crawl's ``--api-url`` host, a
            replay server's ``127.0.0.1:PORT``); images there are fetched too.
        image_deadline_s: total time of one image fetch, every redirect and the body included.
        image_max_redirects: redirects followed per image (each hop's host is checked first).
        concurrency: requests in flight at once per handler instance (``--refine-concurrency``).
        rpm: requests per minute for the endpoint, shared by all threads of the process (``None``:
            no client-side limit; the server's 429s are still honoured).
        tpm: tokens per minute (prompt + completion), likewise.
        journal_dir: where every answer is appended as it arrives (``None``: no journal).
        build_id: names this build's journal files.
        journal_flush_every: answers per fsync of the journal. 1 by default: an answer costs seconds
            and money, an fsync milliseconds, and a ``kill -9`` then loses no answer that was received.
    """

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    max_images: int = 4
    max_image_bytes: int = 2 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    image_timeout_s: float = 10.0
    request_timeout_s: float = 120.0
    num_retries: int = 4
    throttle_delay_secs: int = 1
    validation_attempts: int = 2
    use_response_format: bool = True
    temperature: float = 0.0
    max_tokens: int = 600
    allowed_image_hosts: tuple[str, ...] = DEFAULT_IMAGE_HOSTS
    image_api_hosts: tuple[str, ...] = ()
    image_deadline_s: float = 30.0
    image_max_redirects: int = 3
    concurrency: int = 16
    rpm: float | None = None
    tpm: float | None = None
    journal_dir: str | None = None
    build_id: str = ""
    journal_flush_every: int = 1

    def __post_init__(self) -> None:
        if not self.model:
            raise FatalError("--refiner-model must name a chat model")
        if self.max_images < 0 or self.validation_attempts < 1 or self.num_retries < 0:
            raise FatalError("VLM limits must be non-negative (validation attempts >= 1)")
        if self.concurrency < 1:
            raise FatalError("--refine-concurrency must be at least 1")
        if self.journal_flush_every < 1:
            raise FatalError("journal_flush_every must be at least 1")
        for flag, value in (("--refine-rpm", self.rpm), ("--refine-tpm", self.tpm)):
            if value is not None and value <= 0:
                raise FatalError(f"{flag} must be positive")

    @property
    def refiner_id(self) -> str:
        """``openai@v2`` – the refiner column value (the model goes to the manifest and cache key)."""
        return f"{OPENAI_REFINER_NAME}@{OPENAI_REFINER_VERSION}"


@dataclass(slots=True)
class RefineRequest:
    """One adapter ready for the VLM: its identity and the chat messages."""

    adapter_id: str
    content_hash: str
    messages: list[dict[str, Any]]
    images_sent: int = 0


@dataclass(slots=True)
class RefineOutcome:
    """What came back for one adapter: a refinement, or a reason it failed, and what it cost.

    ``prompt_tokens`` / ``completion_tokens`` are summed from the ``usage`` field of every answer
    received for the adapter (re-asks included); ``requests`` counts every chat request sent for it
    (retries and re-asks included, refused ones too).
    """

    adapter_id: str
    content_hash: str
    refinement: Refinement | None = None
    reason: str | None = None
    detail: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0


def fetch_image(url: str, config: VLMConfig,
                session: requests.Session | None = None) -> tuple[str | None, str | None]:  # fmt: skip
    """Download one example image within the host allow-list, size, time and pixel limits.

    Only hosts in ``config.allowed_image_hosts`` or ``config.image_api_hosts`` are contacted: the URL
    comes from a card, i.e. from anyone who uploads an adapter, so it must not make the build talk to
    other hosts (internal services, a slow server holding a worker). Redirects are followed by hand,
    each target checked before it is requested (:func:`stylus_docs.http.fetch_bounded`).

    Returns:
        ``(data_url, None)``, or ``(None, reason)`` when the image is skipped: ``host_not_allowed``,
        ``too_many_redirects``, ``deadline_exceeded``, ``body_too_large``, ``bad_content_type``,
        ``http_<status>``, ``timeout``, ``connection_error``, ``truncated_body``, ``too_many_pixels``,
        ``bad_image``.
    """
    from PIL import Image

    from stylus_docs.http import FetchError, fetch_bounded

    try:
        got = fetch_bounded(
            url,
            allowed_hosts=(*config.allowed_image_hosts, *config.image_api_hosts),
            max_bytes=config.max_image_bytes,
            deadline_s=config.image_deadline_s,
            timeout=(config.image_timeout_s, config.image_timeout_s),
            max_redirects=config.image_max_redirects,
            content_types=_IMAGE_TYPES,
            session=session,
        )
    except FetchError as exc:
        logger.info("example image skipped (%s): %s", redact(strip_token_params(url)), exc.reason)
        return None, exc.reason
    try:
        with Image.open(io.BytesIO(got.body)) as img:
            if img.width * img.height > config.max_pixels:
                return None, "too_many_pixels"
            img.verify()
    except (OSError, Image.DecompressionBombError, ValueError):
        return None, "bad_image"
    return f"data:{got.content_type};base64,{base64.b64encode(got.body).decode('ascii')}", None


def fetch_image_data_url(url: str, config: VLMConfig, session: requests.Session | None = None) -> str | None:
    """:func:`fetch_image` without the reason: a data URL, or None when the image is skipped."""
    return fetch_image(url, config, session)[0]


def card_prompt(card: AdapterCard) -> str:
    """The user-message text describing a card."""
    lines = [
        f"Title: {card.title}",
        f"Type: {card.type}; base model: {card.base_model or 'unknown'}",
        f"Tags: {', '.join(card.tags) or '-'}",
        f"Trigger words: {', '.join(card.trigger_words) or '-'}",
        f"Weights file: {card.file_name or '-'}",
        "Author's description:",
        (card.description[:3000] or "(none)"),
    ]
    return "\n".join(lines)


def build_request(card: AdapterCard, config: VLMConfig, system_prompt: str,
                  session: requests.Session | None = None,
                  render_root: str | os.PathLike[str] | None = None) -> RefineRequest:  # fmt: skip
    """Chat messages for one card: system prompt, card text, rendered pairs, then example images.

    Rendered pairs (the render stage's output, read from ``render_root``) come first, each labelled
    "same prompt and seed, without / with the adapter", whole pairs only; the creators' example images
    fill the rest of ``config.max_images``. Negative prompts are left out on purpose (the paper: they
    confuse the VLM).
    """
    content: list[dict[str, Any]] = [{"type": "text", "text": card_prompt(card)}]
    budget = config.max_images
    sent = 0
    if render_root is not None:
        for k, (prompt, pair) in enumerate(_render_pairs(card, Path(render_root), config)):
            if budget - sent < 2:
                break
            label = f"Render {k + 1}: same prompt and seed, without / with the adapter (weight {pair[2]:g})."
            content.append({"type": "text", "text": f"{label} Prompt: {prompt}"})
            content.append({"type": "image_url", "image_url": {"url": pair[0]}})
            content.append({"type": "image_url", "image_url": {"url": pair[1]}})
            sent += 2
    examples = 0
    for img in card.images:
        if sent >= budget or img.origin != "example":
            continue
        data_url = fetch_image_data_url(img.url, config, session) if img.url else None
        if data_url is None and not img.prompt:
            continue
        examples += 1
        content.append({"type": "text", "text": f"Example {examples} prompt: {img.prompt or '(unknown)'}"})
        if data_url is not None:
            content.append({"type": "image_url", "image_url": {"url": data_url}})
        sent += 1
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}]
    return RefineRequest(card.adapter_id, card.content_hash, messages, sent)


def _render_pairs(
    card: AdapterCard, root: Path, config: VLMConfig
) -> list[tuple[str, tuple[str, str, float]]]:
    """``(prompt, (without data URL, with data URL, weight))`` of each complete rendered pair, in order."""
    by_key: dict[tuple[str | None, int | None], dict[bool, Any]] = {}
    for img in card.images:
        if img.origin == "rendered" and img.path and img.with_adapter is not None:
            by_key.setdefault((img.prompt, img.seed), {})[bool(img.with_adapter)] = img
    pairs = []
    for (prompt, _seed), pair in by_key.items():
        if False not in pair or True not in pair:
            continue
        urls = [_local_png_data_url(root / pair[flag].path, config) for flag in (False, True)]
        if urls[0] and urls[1]:
            pairs.append((prompt or "", (urls[0], urls[1], float(pair[True].weight or 0.0))))
    return pairs


def _local_png_data_url(path: Path, config: VLMConfig) -> str | None:
    # Our own render output, but still bounded like any image sent: the request must stay small.
    try:
        if path.stat().st_size > config.max_image_bytes:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return f"data:image/png;base64,{base64.b64encode(data).decode('ascii')}"


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_answer(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Tolerant JSON extraction: the whole text, a fenced block, or the first ``{`` … last ``}``.

    Returns:
        (object, None) on success, (None, reason) with reason ``invalid_json`` or ``schema_violation``.
    """
    if not text or not text.strip():
        return None, "invalid_json"
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for cand in candidates:
        try:
            obj = safe_json.loads(cand)
        except safe_json.UnsafeJSON as exc:
            if exc.reason == "non_finite_number":
                return None, "schema_violation"  # NaN/Infinity: valid to Python, never to the schema
            continue
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get("category"), str):
            obj["category"] = obj["category"].strip().lower()
        if validation_errors("refinement.v1.json", obj):
            return None, "schema_violation"
        return obj, None
    return None, "invalid_json"


#: Rough prompt tokens of one image (OpenAI's high-detail estimate for a 512-pixel tile set:
#: 85 + 4 × 170). Only the client-side token budget uses it; the answer's ``usage`` corrects it.
IMAGE_TOKEN_ESTIMATE = 765


def estimate_tokens(messages: list[dict[str, Any]], max_tokens: int) -> int:
    """Tokens a request will be charged, estimated before it is sent (~4 characters a token, a fixed
    cost per image, plus ``max_tokens``, which endpoints reserve against the per-minute budget)."""
    chars = images = 0
    for message in messages:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if part.get("type") == "image_url":
                images += 1
            else:
                chars += len(str(part.get("text", "")))
    return chars // 4 + images * IMAGE_TOKEN_ESTIMATE + max_tokens


@dataclass(slots=True)
class _Usage:
    """Running cost of one adapter (all its requests)."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, usage: Any) -> int | None:
        """Add one answer's ``usage``; return its total tokens, or None when the server sent none."""
        if usage is None:
            return None
        prompt, completion = int(usage.prompt_tokens or 0), int(usage.completion_tokens or 0)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        return prompt + completion


def _log_retry(req: RefineRequest, state: tenacity.RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    logger.info("refine %s: retry %d after %s", req.adapter_id, state.attempt_number, type(exc).__name__)


def _failed(req: RefineRequest, reason: str, detail: str | None) -> RefineOutcome:
    return RefineOutcome(req.adapter_id, req.content_hash, None, reason, detail)


class _CredentialsRefused(Exception):
    """The endpoint refused the credentials in another thread; this request is not sent."""


class _Runtime:
    """Per-process state of a handler instance (never pickled with it).

    ``gate`` holds back all but one request until the endpoint has answered once: a bad key is then
    seen on the first request, and the rest of the batch is not sent at all (instead of
    ``concurrency`` refused requests at once).
    """

    def __init__(self, config: VLMConfig, base_url: str) -> None:
        self.pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="refine")
        self.limiter: RateLimiter = shared_limiter((base_url, config.model), config.rpm, config.tpm)
        self.journal: AnswerJournal | None = None
        if config.journal_dir:
            build, every = config.build_id or "build", config.journal_flush_every
            self.journal = AnswerJournal(Path(config.journal_dir), build, flush_every=every)
        self.gate = threading.Condition()
        self.endpoint_ok = False
        self.probing = False


_RUNTIME_LOCK = threading.Lock()


class OpenAIRefineHandler(RemoteModelHandler[RefineRequest, PredictionResult, Any]):
    """Beam ``RemoteModelHandler`` calling ``/v1/chat/completions`` for each :class:`RefineRequest`.

    ``request(batch)`` sends up to ``config.concurrency`` requests at once and returns one
    :class:`RefineOutcome` per element; it raises only for a :class:`FatalError`.
    """

    def __init__(self, config: VLMConfig, system_prompt: str | None = None) -> None:
        # Beam's retry re-runs request() for the whole batch: the elements that already have answers
        # would be asked (and paid for) again. So Beam retries nothing (num_retries=0) and each
        # element retries its own request (tenacity, bounded by config.num_retries); request() turns
        # an element whose retries ran out into a "retries_exhausted" outcome instead of raising.
        super().__init__(
            namespace="stylus_docs.refine.openai",
            num_retries=0,
            throttle_delay_secs=config.throttle_delay_secs,
            retry_filter=retryable,
        )
        self.config = config
        self.system_prompt = system_prompt or load_prompt()
        self._use_rf = config.use_response_format
        # Set on the first 401/403: the key is bad for every request, so the rest are not sent at all.
        # The build refuses to publish when any answer is "unauthorized" (exit 2).
        self._auth_failure: str | None = None
        self._rt: _Runtime | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Threads, locks and open files stay in the process that made them.
        state = self.__dict__.copy()
        state["_rt"] = None
        return state

    def _base_url(self) -> str | None:
        return self.config.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def create_client(self) -> Any:
        import openai

        key = get_secret("OPENAI_API_KEY")
        base_url = self._base_url()
        if not key and not base_url:
            raise FatalError(
                "the openai refiner needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)"
            )
        # SDK retries off: the handler owns retries (per request) and rate limits (per process).
        return openai.OpenAI(api_key=key or "unused", base_url=base_url, max_retries=0,
                             timeout=self.config.request_timeout_s)  # fmt: skip

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # A batch feeds the pool: at least one request per thread, and a few rounds of them so that
        # the batch's slowest element (a retry after a 429) idles few threads at its end.
        # max_batch_duration_secs is left unset: it switches BatchElements to its stateful form, which
        # routes every element through one shared key — a streaming feature that would serialise a
        # batch build through one worker.
        c = self.config.concurrency
        return {"min_batch_size": c, "max_batch_size": c * 8}

    def runtime(self) -> _Runtime:
        """The thread pool, rate limiter and journal of this instance (created on first use)."""
        if self._rt is None:
            with _RUNTIME_LOCK:
                if self._rt is None:
                    self._rt = _Runtime(self.config, self._base_url() or "https://api.openai.com/v1")
        return self._rt

    def close(self) -> None:
        """Stop the threads and flush and close the journal (Beam gives handlers no teardown hook, so
        the journal is also flushed at the end of every ``request``)."""
        rt, self._rt = self._rt, None
        if rt is not None:
            rt.pool.shutdown(wait=True)
            if rt.journal is not None:
                rt.journal.close()

    def _response_format(self) -> dict[str, Any]:
        # Strict structured output supports no numeric/length bounds: those are checked after parsing.
        props = load_schema("refinement.v1.json")["properties"]
        schema = {
            "type": "object",
            "additionalProperties": False,
            "required": ["description", "category", "recommended_weight"],
            "properties": {
                "description": {"type": "string"},
                "category": {"type": "string", "enum": props["category"]["enum"]},
                "recommended_weight": {"type": "number"},
            },
        }
        return {
            "type": "json_schema",
            "json_schema": {"name": "refinement_v1", "strict": True, "schema": schema},
        }

    # -- one HTTP request -------------------------------------------------------------------------

    def _open_gate(self, rt: _Runtime) -> None:
        if not rt.endpoint_ok:
            with rt.gate:
                rt.endpoint_ok = True
                rt.gate.notify_all()

    def _refuse(self, rt: _Runtime, status: int) -> None:
        with rt.gate:
            if self._auth_failure is None:
                self._auth_failure = f"HTTP {status} from the endpoint: check OPENAI_API_KEY"
            rt.gate.notify_all()

    def _send(self, client: Any, kwargs: dict[str, Any], usage: _Usage) -> Any:
        """One chat request through the rate limiter; records usage, pauses everyone on a 429 that
        says how long to wait."""
        import openai

        rt = self.runtime()
        estimate = estimate_tokens(kwargs["messages"], self.config.max_tokens)
        rt.limiter.acquire(estimate)
        if self._auth_failure is not None:  # refused while this thread waited for its turn
            rt.limiter.settle(estimate, 0)
            raise _CredentialsRefused
        usage.requests += 1
        try:
            resp = client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            rt.limiter.settle(estimate, 0)  # a refused request is not charged
            if exc.status_code in (401, 403):
                self._refuse(rt, exc.status_code)
                raise
            wait = server_wait(exc) if isinstance(exc, openai.RateLimitError) else None
            if wait:
                rt.limiter.pause_until(time.monotonic() + min(wait, MAX_SERVER_WAIT_S))
            # Any other status means the key was accepted. Opened after the pause is set, so the
            # adapters held back by the gate wait for it too.
            self._open_gate(rt)
            raise
        except openai.APIError:
            rt.limiter.settle(estimate, 0)
            raise
        self._open_gate(rt)
        actual = usage.add(resp.usage)
        rt.limiter.settle(estimate, estimate if actual is None else actual)
        return resp

    def _chat(self, client: Any, req: RefineRequest, usage: _Usage) -> str | None:
        import openai

        kwargs: dict[str, Any] = {
            "model": self.config.model,
            "messages": req.messages,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        if self._use_rf:
            kwargs["response_format"] = self._response_format()
        try:
            resp = self._send(client, kwargs, usage)
        except openai.BadRequestError:
            # Decided on this request, not on the shared flag: another thread may have cleared it.
            if "response_format" not in kwargs:
                raise
            # Servers without structured output reject response_format: ask again, parse tolerantly.
            if self._use_rf:
                logger.warning("endpoint refused response_format=json_schema; falling back to plain answers")
            self._use_rf = False
            kwargs.pop("response_format")
            resp = self._send(client, kwargs, usage)
        if not resp.choices:
            return None
        return resp.choices[0].message.content

    def _ask(self, client: Any, req: RefineRequest, usage: _Usage) -> str | None:
        """:meth:`_chat` with bounded retries on 429/5xx/connection errors."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.config.num_retries + 1),
            wait=ServerOrJitterWait(server_wait),
            retry=tenacity.retry_if_exception(retryable),
            reraise=True,
            before_sleep=lambda state: _log_retry(req, state),
        )
        return retrying(self._chat, client, req, usage)

    # -- one adapter --------------------------------------------------------------------------------

    def _journal(self, req: RefineRequest, ref: Refinement, usage: _Usage) -> None:
        journal = self.runtime().journal
        if journal is None:
            return
        try:
            journal.append({
                "content_hash": req.content_hash, "model": self.config.model,
                "description": ref.description, "category": ref.category,
                "recommended_weight": ref.recommended_weight, "refiner": ref.refiner,
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            })  # fmt: skip
        except OSError as exc:
            # The answer is still returned (and cached at the end of the build); only the crash-safety
            # of this one answer is lost, which is not worth failing the adapter for.
            logger.error("could not journal the answer for %s: %s", req.adapter_id, exc)

    def _one(self, client: Any, req: RefineRequest, usage: _Usage) -> RefineOutcome:
        import openai

        reason, detail = "invalid_json", None
        for _ in range(self.config.validation_attempts):
            if self._auth_failure is not None:
                return _failed(req, UNAUTHORIZED, self._auth_failure)
            try:
                text = self._ask(client, req, usage)
            except _CredentialsRefused:
                return _failed(req, UNAUTHORIZED, self._auth_failure)
            except (openai.AuthenticationError, openai.PermissionDeniedError):
                return _failed(req, UNAUTHORIZED, self._auth_failure)
            except openai.APIStatusError as exc:
                if retryable(exc):
                    raise
                return _failed(req, f"http_{exc.status_code}", redact(str(exc.message))[:300])
            if text is not None and len(text) > MAX_ANSWER_CHARS:
                reason, detail = "answer_too_large", f"{len(text)} characters"
                continue
            obj, reason = parse_answer(text)
            if obj is not None:
                ref = Refinement(
                    description=obj["description"].strip(),
                    category=obj["category"],
                    recommended_weight=float(obj["recommended_weight"]),
                    refiner=self.config.refiner_id,
                )
                self._journal(req, ref, usage)
                return RefineOutcome(req.adapter_id, req.content_hash, ref)
            detail = redact((text or "")[:200])
        return _failed(req, reason, detail)

    def _take_turn(self, rt: _Runtime) -> tuple[bool, bool]:
        """Wait until this adapter may be sent: ``(allowed, probing)``; not allowed after a 401/403."""
        with rt.gate:
            while True:
                if self._auth_failure is not None:
                    return False, False
                if rt.endpoint_ok:
                    return True, False
                if not rt.probing:
                    rt.probing = True
                    return True, True
                rt.gate.wait()

    def refine_one(self, client: Any, req: RefineRequest) -> RefineOutcome:
        """Refine one adapter; never raises except :class:`FatalError` (every failure is an outcome)."""
        import openai

        rt = self.runtime()
        usage = _Usage()
        allowed, probing = self._take_turn(rt)
        try:
            if not allowed:
                outcome = _failed(req, UNAUTHORIZED, self._auth_failure)
            else:
                outcome = self._one(client, req, usage)
        except openai.APIError as exc:
            reason = "retries_exhausted" if retryable(exc) else "api_error"
            outcome = _failed(req, reason, redact(f"{type(exc).__name__}: {exc}")[:300])
        except FatalError:
            raise
        except Exception as exc:
            # Boundary: one adapter's unexpected failure must not fail the batch, whose other answers
            # are already paid for. Logged with its traceback and routed as a dead letter.
            logger.exception("refine %s failed unexpectedly", req.adapter_id)
            outcome = _failed(req, "refine_error", type(exc).__name__)
        finally:
            if probing:
                with rt.gate:
                    rt.probing = False  # the next waiting adapter probes if this one got no answer
                    rt.gate.notify_all()
        outcome.requests = usage.requests
        outcome.prompt_tokens = usage.prompt_tokens
        outcome.completion_tokens = usage.completion_tokens
        progress.tick("refine")  # no-op unless the build opened a bar (a terminal, in-process runner)
        return outcome

    def request(self, batch: Sequence[RefineRequest], model: Any,
                inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:  # fmt: skip
        rt = self.runtime()
        futures = [rt.pool.submit(self.refine_one, model, req) for req in batch]
        outcomes = [future.result() for future in futures]
        if rt.journal is not None:
            rt.journal.flush()  # whatever Beam sees is on disk, whatever the flush policy
        model_id = self.config.model
        return [PredictionResult(req, out, model_id) for req, out in zip(batch, outcomes, strict=True)]
