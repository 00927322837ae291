"""Thumbnails for the report: local images of a build (rendered PNGs, cached examples) and, on request,
example images fetched within the image-host allow-list.

A thumbnail is a small JPEG under ``<report>_files/thumbs/``, named by the SHA-256 of its source, so
the page references relative files only and a re-run writes the same names. Decoding is bounded (file
size and pixel caps, as everywhere images come from data): an image that is too large, unreadable or
outside the build is left out with a reason, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stylus_docs.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

THUMB_PX = 192
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 64_000_000
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")


@dataclass(frozen=True)
class Thumb:
    """One thumbnail written: ``rel`` is its path relative to the report's folder."""

    rel: str
    width: int
    height: int


def thumbnail_bytes(data: bytes, size: int = THUMB_PX) -> tuple[bytes, int, int] | None:
    """A JPEG thumbnail (longest side ``size``) of an encoded image, or None when it cannot be decoded
    within :data:`MAX_PIXELS`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                return None
            img.thumbnail((size, size))
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85)
    return buf.getvalue(), rgb.width, rgb.height


def local_image(build_dir: Path, rel: str) -> bytes | None:
    """The bytes of image ``rel`` of a build, or None (with a log line) when it is absent, too large
    or resolves outside the build (an images row is data; it must not make the report read anywhere)."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        logger.warning("report: image path %r is not inside the build; skipped", rel)
        return None
    real = Path(os.path.realpath(build_dir / path))
    if not real.is_relative_to(os.path.realpath(build_dir)):
        logger.warning("report: image %r links outside the build; skipped", rel)
        return None
    try:
        if real.stat().st_size > MAX_IMAGE_BYTES:
            logger.warning("report: image %r is larger than %d bytes; skipped", rel, MAX_IMAGE_BYTES)
            return None
        return real.read_bytes()
    except OSError as exc:
        logger.info("report: image %r unreadable (%s); skipped", rel, exc.strerror)
        return None


def fetch_example(url: str, hosts: Iterable[str], deadline_s: float = 20.0) -> bytes | None:
    """One example image by URL, only from ``hosts``, within size and time limits; None when skipped."""
    from stylus_docs.http import FetchError, fetch_bounded
    from stylus_docs.secrets import redact, strip_token_params

    try:
        got = fetch_bounded(
            url, allowed_hosts=tuple(hosts), max_bytes=MAX_IMAGE_BYTES, deadline_s=deadline_s,
            timeout=(10.0, 10.0), max_redirects=3, content_types=_IMAGE_TYPES,
        )  # fmt: skip
    except FetchError as exc:
        logger.info("report: example image skipped (%s): %s", exc.reason, redact(strip_token_params(url)))
        return None
    return got.body


class ThumbWriter:
    """Writes thumbnails into ``files_dir/thumbs`` (once per distinct source) and counts outcomes.

    Args:
        files_dir: The report's ``<name>_files`` folder.
        prefix: How the HTML refers to ``files_dir`` (its name, relative to the HTML file).
    """

    def __init__(self, files_dir: Path, prefix: str) -> None:
        self.dir = files_dir / "thumbs"
        self.prefix = prefix
        self.written = 0
        self.skipped = 0

    def add(self, data: bytes | None) -> Thumb | None:
        """Thumbnail of ``data`` (None when ``data`` is None or not an image)."""
        if data is None:
            self.skipped += 1
            return None
        name = hashlib.sha256(data).hexdigest()[:24] + ".jpg"
        made = thumbnail_bytes(data)
        if made is None:
            self.skipped += 1
            return None
        body, width, height = made
        path = self.dir / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, body)
            self.written += 1
        return Thumb(rel=f"{self.prefix}/thumbs/{name}", width=width, height=height)


def fetch_all(urls: list[str], hosts: Iterable[str], workers: int = 8) -> dict[str, bytes | None]:
    """Fetch ``urls`` concurrently (bounded pool; each fetch has its own deadline)."""
    hosts = tuple(hosts)
    if not urls:
        return {}
    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = tqdm(
            pool.map(lambda u: fetch_example(u, hosts), urls), total=len(urls), desc="report: examples",
            unit="image", disable=None, leave=False,
        )  # fmt: skip
        return dict(zip(urls, results, strict=True))
