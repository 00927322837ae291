"""Keeping secrets out of logs, files and error messages.

Secrets come only from environment variables (``CIVITAI_API_TOKEN``, ``HF_TOKEN``, ``OPENAI_API_KEY``).
Everything the toolkit writes or prints that may contain a URL or a server message goes through
:func:`redact` first, and every URL that is stored goes through :func:`strip_token_params`.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: Environment variables whose values are secrets.
SECRET_ENV_VARS: tuple[str, ...] = (
    "CIVITAI_API_TOKEN",
    "HF_TOKEN",
    "OPENAI_API_KEY",
    "HUGGING_FACE_HUB_TOKEN",
)

#: Query parameters that carry credentials in Civitai / HF / signed-storage URLs.
_TOKEN_PARAMS = {"token", "api_key", "apikey", "access_token", "key"}

_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_QUERY_TOKEN = re.compile(r"(?i)([?&](?:token|api_key|apikey|access_token)=)[^&\s\"']+")


def get_secret(name: str) -> str | None:
    """Return the secret in environment variable ``name``, or None when unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def strip_token_params(url: str) -> str:
    """Remove credential query parameters from ``url`` (for URLs that are stored or logged)."""
    if not url or "?" not in url:
        return url
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in pairs if k.lower() not in _TOKEN_PARAMS]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def redact(text: str, extra_secrets: tuple[str, ...] = ()) -> str:
    """Replace every known secret value, bearer token and ``token=`` parameter in ``text``."""
    if not text:
        return text
    out = _BEARER.sub(r"\1***", text)
    out = _QUERY_TOKEN.sub(r"\1***", out)
    for name in SECRET_ENV_VARS:
        value = get_secret(name)
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    for value in extra_secrets:
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    return out
