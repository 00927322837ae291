"""The LLM composer: any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, …).

The catalogue and the paper's rules come from the versioned prompt file ``stylus_docs/prompts/compose_v1.md``;
the answer must be a JSON object valid against ``composition.v1.json#/$defs/llm_answer``.

Failure handling:

* transport faults (429, 5xx, timeouts, connection errors) are retried by the OpenAI client, bounded by
  ``http_retries`` with exponential backoff and jitter, honouring ``Retry-After``; when spent →
  :class:`LLMUnavailable`;
* other HTTP errors (401, 404 model, 400) are not retried → :class:`LLMUnavailable` at once;
* an answer that is not valid JSON or violates the schema is sent back with the error for another try,
  at most ``answer_retries`` times → :class:`InvalidAnswer`.

Both are :class:`~stylus_docs.errors.FatalError` subclasses: the CLI prints one line, unless the caller
falls back to the offline composer. The API key is read when the client is built and never logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import jsonschema

from stylus_docs import schemas
from stylus_docs.compose.types import Candidate, ComposeSettings, RawAssignment, RawTopic
from stylus_docs.errors import FatalError
from stylus_docs.secrets import get_secret, redact

log = logging.getLogger(__name__)

PROMPT_VERSION = "compose_v1"
SCHEMA_NAME = "composition.v1.json"
_SECTION = re.compile(r"^<!-- section: ([a-z_]+) -->\s*$", re.MULTILINE)


class LLMUnavailable(FatalError):
    """The endpoint could not be used (retries spent, auth or model error, no key)."""


class InvalidAnswer(FatalError):
    """The model kept answering something that is not a valid composition."""


@lru_cache(maxsize=4)
def load_prompt(version: str = PROMPT_VERSION) -> dict[str, str]:
    """Sections of the versioned prompt file ``stylus_docs/prompts/<version>.md`` (package data).

    Returns:
        ``{section_name: text}`` for every ``<!-- section: NAME -->`` block.
    """
    try:
        text = resources.files("stylus_docs").joinpath("prompts", f"{version}.md").read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FatalError(f"prompt file {version}.md is missing from the package") from exc
    parts = _SECTION.split(text)
    sections = {parts[i]: parts[i + 1].strip() for i in range(1, len(parts) - 1, 2)}
    for needed in ("system", "user", "refine", "repair"):
        if needed not in sections:
            raise FatalError(f"prompt file {version}.md lacks the {needed!r} section")
    return sections


def load_schema() -> dict[str, Any]:
    """The composition JSON schema, ``schemas/composition.v1.json`` (read by the shared loader)."""
    return schemas.load_schema(SCHEMA_NAME)


def answer_schema() -> dict[str, Any]:
    """The schema an LLM answer must satisfy (``$defs.llm_answer``, self-contained)."""
    schema = load_schema()
    return {"$defs": schema["$defs"], "$ref": "#/$defs/llm_answer"}


def _fill(template: str, values: dict[str, Any]) -> str:
    # Plain replacement, not str.format: the templates contain literal JSON braces.
    out = template
    for key, value in values.items():
        out = out.replace("{{" + key + "}}", str(value))
    return out


def format_catalogue(candidates: Sequence[Candidate], max_description_chars: int = 1000) -> str:
    """The catalogue block of the prompt: index, title, category, tags, weight, description."""
    lines: list[str] = []
    for c in candidates:
        desc = " ".join((c.description or "").split())
        if len(desc) > max_description_chars:
            desc = desc[: max_description_chars - 1].rstrip() + "…"
        weight = "0.8" if c.recommended_weight is None else f"{c.recommended_weight:g}"
        tags = ", ".join(t for t in c.tags[:20] if t)
        lines.append(f"[{c.index}] {' '.join((c.title or '').split())}")
        lines.append(f"  category: {c.category or 'unknown'} | tags: {tags or '-'} | weight: {weight}")
        lines.append(f"  description: {desc or '-'}")
    return "\n".join(lines)


def build_messages(
    prompt: str, candidates: Sequence[Candidate], settings: ComposeSettings
) -> list[dict[str, str]]:
    """System + user messages of the first turn."""
    sections = load_prompt()
    values = {
        "prompt": prompt.replace('"', "'"),
        "catalogue": format_catalogue(candidates, settings.max_description_chars),
        "per_topic": settings.per_topic,
        "max_style": settings.max_style,
        "count": len(candidates),
    }
    return [
        {"role": "system", "content": sections["system"]},
        {"role": "user", "content": _fill(sections["user"], values)},
    ]


def parse_answer(text: str | None) -> list[RawTopic]:
    """Parse and validate a model answer.

    Accepts the bare object, or one wrapped in prose or a code fence (the text from the first ``{`` to
    the last ``}`` is parsed as JSON — never evaluated as Python, unlike the reference).

    Raises:
        ValueError: with a short description fit to send back to the model.
    """
    if not text or "{" not in text or "}" not in text:
        raise ValueError("the answer contains no JSON object")
    body = text[text.index("{") : text.rindex("}") + 1]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at character {exc.pos})") from exc
    validator = jsonschema.Draft202012Validator(answer_schema())
    error = next(iter(sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "the top level"
        raise ValueError(f"schema violation at {where}: {error.message[:200]}")
    return [
        RawTopic(
            topic=str(t["topic"]),
            adapters=[
                RawAssignment(index=a["index"], reason=str(a.get("reason", ""))) for a in t["adapters"]
            ],
        )
        for t in data["topics"]
    ]


class OpenAIComposerClient:
    """Chat-completions client for the composer.

    Args:
        model: chat model name.
        base_url: endpoint (default: ``OPENAI_BASE_URL`` or the OpenAI API).
        http_retries: client retries on 429 / 5xx / timeouts / connection errors.
        timeout_s: per-request timeout.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        http_retries: int = 4,
        timeout_s: float = 60.0,
    ) -> None:
        import openai

        self.model = model
        base = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = get_secret("OPENAI_API_KEY")
        if key is None and base is None:
            raise LLMUnavailable("OPENAI_API_KEY is not set (or point OPENAI_BASE_URL at a local server)")
        # Local OpenAI-compatible servers (vLLM, Ollama) accept any key; the client insists on one.
        self._client = openai.OpenAI(
            api_key=key or "no-key", base_url=base, max_retries=http_retries, timeout=timeout_s
        )
        self._openai = openai

    def chat(self, messages: list[dict[str, str]]) -> str:
        """One chat completion (temperature 0); returns the message text.

        Raises:
            LLMUnavailable: retries spent, or a non-retryable HTTP error.
        """
        openai = self._openai
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=0.0
            )
        except (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError) as exc:
            raise LLMUnavailable(f"LLM endpoint unavailable after retries: {type(exc).__name__}") from exc
        except openai.APIStatusError as exc:
            raise LLMUnavailable(
                f"LLM endpoint refused the request: HTTP {exc.status_code} {redact(str(exc))[:200]}"
            ) from exc
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""


def compose_llm(
    prompt: str,
    candidates: Sequence[Candidate],
    settings: ComposeSettings,
    client: OpenAIComposerClient | None = None,
) -> tuple[list[RawTopic], dict[str, Any]]:
    """Ask the LLM for topics and adapter indices.

    Args:
        prompt: the user's prompt.
        candidates: the retrieved catalogue.
        settings: model name, caps, retries, the optional refine turn.
        client: a ready client (default: one built from the environment).

    Returns:
        ``(proposal, stats)``; ``stats`` counts requests and invalid answers.

    Raises:
        LLMUnavailable: the endpoint could not be used.
        InvalidAnswer: no valid answer within ``answer_retries`` extra tries.
    """
    if client is None:
        if not settings.model:
            raise FatalError("--model is required with --composer llm")
        client = OpenAIComposerClient(
            settings.model, http_retries=settings.http_retries, timeout_s=settings.timeout_s
        )
    sections = load_prompt()
    messages = build_messages(prompt, candidates, settings)
    stats = {"requests": 0, "invalid_answers": 0}

    def ask(msgs: list[dict[str, str]]) -> list[RawTopic]:
        last_error = ""
        for attempt in range(settings.answer_retries + 1):
            stats["requests"] += 1
            text = client.chat(msgs)
            try:
                return parse_answer(text)
            except ValueError as exc:
                stats["invalid_answers"] += 1
                last_error = str(exc)
                log.warning("invalid composer answer (try %d): %s", attempt + 1, last_error)
                msgs = [
                    *msgs,
                    {"role": "assistant", "content": text[:4000]},
                    {"role": "user", "content": _fill(sections["repair"], {"error": last_error})},
                ]
        raise InvalidAnswer(
            f"the LLM gave no valid composition in {settings.answer_retries + 1} tries (last: {last_error})"
        )

    proposal = ask(messages)
    if settings.refine:
        first = json.dumps(
            {
                "topics": [
                    {
                        "topic": t.topic,
                        "adapters": [{"index": a.index, "reason": a.reason} for a in t.adapters],
                    }
                    for t in proposal
                ]
            }
        )
        refine = _fill(
            sections["refine"],
            {
                "prompt": prompt.replace('"', "'"),
                "per_topic": settings.per_topic,
                "max_style": settings.max_style,
            },
        )
        try:
            proposal = ask(
                [*messages, {"role": "assistant", "content": first}, {"role": "user", "content": refine}]
            )
        except InvalidAnswer as exc:
            # The first answer was valid; a broken refinement is not worth failing the prompt for.
            log.warning("refine turn gave no valid answer, keeping the first one: %s", exc)
    return proposal, stats
