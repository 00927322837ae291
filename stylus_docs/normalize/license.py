"""License fields of Civitai models across API eras."""

from __future__ import annotations

from typing import Any

#: The Civitai commercial-use values (CommercialUse enum).
COMMERCIAL_VALUES = ("None", "Image", "RentCivit", "Rent", "Sell")


def normalize_commercial_use(value: Any) -> list[str]:
    """Normalize ``allowCommercialUse`` of any era to a list of permissions.

    * 2023: one string (``"Sell"``, ``"None"``),
    * 2024–25: a JSON array (``["Image", "Rent"]``),
    * 2025-12 docs sample: a Postgres array literal string (``"{Image,RentCivit}"``).

    ``"None"`` means no commercial use and gives ``[]``. Unknown values are kept as given (the enum
    grows over time) but stripped of quotes and whitespace.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{") and text.endswith("}"):
            items = [part.strip().strip('"') for part in text[1:-1].split(",")]
        else:
            items = [text]
    elif isinstance(value, list | tuple):
        items = [str(v).strip() for v in value if v is not None]
    else:
        raise ValueError(f"allowCommercialUse has unexpected type {type(value).__name__}")
    seen: dict[str, None] = {}
    for item in items:
        if item and item != "None":
            seen.setdefault(item, None)
    return list(seen)


def as_bool(value: Any) -> bool | None:
    """A license flag as a bool (``None`` when absent); accepts ``"true"``/``"false"`` strings."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int):
        return bool(value)
    return None
