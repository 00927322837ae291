"""VLM refiner over any OpenAI-compatible chat endpoint, run through Beam ``RunInference``.

Flow per adapter: :func:`build_request` (card text + up to N example images fetched with size and pixel
limits, sent as data URLs; images that cannot be fetched are skipped) → :class:`OpenAIRefineHandler`
(a Beam ``RemoteModelHandler``: client-side throttling and bounded retries with backoff come from Beam,
the SDK's own retries are off, only 429/5xx/connection errors are retried) → :class:`RefineOutcome`.

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
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import requests
from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler

from stylus_docs import safe_json
from stylus_docs.errors import FatalError
from stylus_docs.records import AdapterCard, Refinement
from stylus_docs.schemas import load_schema, validation_errors
from stylus_docs.secrets import get_secret, redact, strip_token_params

logger = logging.getLogger(__name__)

OPENAI_REFINER_NAME = "openai"
#: Bump with the prompt file: cached answers of another version are not reused.
OPENAI_REFINER_VERSION = "v1"
PROMPT_FILE = "refine_v1.md"
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
        image_timeout_s: per-image fetch timeout.
        request_timeout_s: per-request timeout of the chat call.
        num_retries: Beam retries of a request on 429/5xx/connection errors.
        throttle_delay_secs: Beam's client-side throttling delay.
        validation_attempts: tries per adapter when answers fail JSON/schema validation.
        use_response_format: ask for ``json_schema`` output (falls back when the server refuses).
        allowed_image_hosts: hosts images may be fetched from (empty: any http(s) host).
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
    allowed_image_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.model:
            raise FatalError("--refiner-model must name a chat model")
        if self.max_images < 0 or self.validation_attempts < 1 or self.num_retries < 0:
            raise FatalError("VLM limits must be non-negative (validation attempts >= 1)")

    @property
    def refiner_id(self) -> str:
        """``openai@v1`` – the refiner column value (the model goes to the manifest and cache key)."""
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
    """What came back for one adapter: a refinement, or a reason it failed."""

    adapter_id: str
    content_hash: str
    refinement: Refinement | None = None
    reason: str | None = None
    detail: str | None = None


def fetch_image_data_url(url: str, config: VLMConfig, session: requests.Session | None = None) -> str | None:
    """Download one image within the size and pixel limits; return a data URL or None (skipped)."""
    from urllib.parse import urlsplit

    from PIL import Image

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    if config.allowed_image_hosts and parts.hostname not in config.allowed_image_hosts:
        return None
    getter = session or requests
    try:
        with getter.get(url, timeout=config.image_timeout_s, stream=True) as resp:
            if resp.status_code != 200:
                return None
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype not in _IMAGE_TYPES:
                return None
            data = b""
            for chunk in resp.iter_content(65536):
                data += chunk
                if len(data) > config.max_image_bytes:
                    return None
    except requests.RequestException as exc:
        logger.info("example image skipped (%s): %s", redact(strip_token_params(url)), type(exc).__name__)
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > config.max_pixels:
                return None
            img.verify()
    except (OSError, Image.DecompressionBombError, ValueError):
        return None
    return f"data:{ctype};base64,{base64.b64encode(data).decode('ascii')}"


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
                  session: requests.Session | None = None) -> RefineRequest:  # fmt: skip
    """Chat messages for one card: system prompt, card text, then each image with its prompt.

    Negative prompts are left out on purpose (the paper: they confuse the VLM).
    """
    content: list[dict[str, Any]] = [{"type": "text", "text": card_prompt(card)}]
    sent = 0
    for img in card.images:
        if sent >= config.max_images:
            break
        data_url = fetch_image_data_url(img.url, config, session) if (img.url and config.max_images) else None
        if data_url is None and not img.prompt:
            continue
        label = f"Example {sent + 1} prompt: {img.prompt or '(unknown)'}"
        content.append({"type": "text", "text": label})
        if data_url is not None:
            content.append({"type": "image_url", "image_url": {"url": data_url}})
        sent += 1
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": content}]
    return RefineRequest(card.adapter_id, card.content_hash, messages, sent)


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


def _retryable(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.RateLimitError | openai.InternalServerError | openai.APIConnectionError)


class OpenAIRefineHandler(RemoteModelHandler[RefineRequest, PredictionResult, Any]):
    """Beam ``RemoteModelHandler`` calling ``/v1/chat/completions`` for each :class:`RefineRequest`."""

    def __init__(self, config: VLMConfig, system_prompt: str | None = None) -> None:
        super().__init__(
            namespace="stylus_docs.refine.openai",
            num_retries=config.num_retries,
            throttle_delay_secs=config.throttle_delay_secs,
            retry_filter=_retryable,
        )
        self.config = config
        self.system_prompt = system_prompt or load_prompt()
        self._use_rf = config.use_response_format
        # Set on the first 401/403: the key is bad for every request, so the rest are not sent at all.
        # The build refuses to publish when any answer is "unauthorized" (exit 2).
        self._auth_failure: str | None = None

    def create_client(self) -> Any:
        import openai

        key = get_secret("OPENAI_API_KEY")
        base_url = self.config.base_url or os.environ.get("OPENAI_BASE_URL") or None
        if not key and not base_url:
            raise FatalError(
                "the openai refiner needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)"
            )
        # SDK retries off: Beam's RemoteModelHandler owns retry and throttling.
        return openai.OpenAI(api_key=key or "unused", base_url=base_url, max_retries=0,
                             timeout=self.config.request_timeout_s)  # fmt: skip

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"max_batch_size": 1}

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

    def _chat(self, client: Any, req: RefineRequest) -> str | None:
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
            resp = client.chat.completions.create(**kwargs)
        except openai.BadRequestError:
            if not self._use_rf:
                raise
            # Servers without structured output reject response_format: ask again, parse tolerantly.
            logger.warning("endpoint refused response_format=json_schema; falling back to plain answers")
            self._use_rf = False
            kwargs.pop("response_format")
            resp = client.chat.completions.create(**kwargs)
        except openai.RateLimitError as exc:
            retry_after = exc.response.headers.get("retry-after") if exc.response is not None else None
            try:
                wait = min(float(retry_after), 30.0) if retry_after else 0.0
            except ValueError:
                wait = 0.0
            if wait > 0:
                time.sleep(wait)  # honour the server's Retry-After before Beam's own backoff
            raise
        if not resp.choices:
            return None
        return resp.choices[0].message.content

    def _one(self, client: Any, req: RefineRequest) -> RefineOutcome:
        import openai

        if self._auth_failure is not None:
            return RefineOutcome(req.adapter_id, req.content_hash, None, UNAUTHORIZED, self._auth_failure)
        reason, detail = "invalid_json", None
        for _ in range(self.config.validation_attempts):
            try:
                text = self._chat(client, req)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                self._auth_failure = f"HTTP {exc.status_code} from the endpoint: check OPENAI_API_KEY"
                return RefineOutcome(req.adapter_id, req.content_hash, None, UNAUTHORIZED, self._auth_failure)
            except openai.APIStatusError as exc:
                if _retryable(exc):
                    raise
                return RefineOutcome(req.adapter_id, req.content_hash, None, f"http_{exc.status_code}",
                                     redact(str(exc.message))[:300])  # fmt: skip
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
                return RefineOutcome(req.adapter_id, req.content_hash, ref)
            detail = redact((text or "")[:200])
        return RefineOutcome(req.adapter_id, req.content_hash, None, reason, detail)

    def request(self, batch: Sequence[RefineRequest], model: Any,
                inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:  # fmt: skip
        return [PredictionResult(req, self._one(model, req), self.config.model) for req in batch]
