"""HTML (Civitai descriptions) and Markdown (HF cards) to clean text.

A real HTML parser (BeautifulSoup, stdlib ``html.parser`` backend) does the work: scripts, styles and
embedded media are dropped, block elements become paragraph breaks, whitespace is collapsed.
"""

from __future__ import annotations

import re
import warnings

from bs4 import BeautifulSoup, MarkupResemblesLocatorWarning

_DROP = (
    "script",
    "style",
    "noscript",
    "iframe",
    "object",
    "embed",
    "svg",
    "template",
    "img",
    "video",
    "audio",
)
_BLOCKS = (
    "p", "div", "section", "article", "header", "footer", "blockquote", "pre", "table", "tr",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
)  # fmt: skip
_SPACES = re.compile(r"[ \t\f\v\u00a0\u200b]+")
_MANY_BREAKS = re.compile(r"\n{3,}")
_FENCE = re.compile(r"```.*?```", re.S)
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_MD_HEADING = re.compile(r"(?m)^\s{0,3}#{1,6}\s*")
_MD_EMPH = re.compile(r"(\*\*|__|(?<!\w)\*(?!\s)|`)")


def _tidy(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r", "\n").split("\n")]
    return _MANY_BREAKS.sub("\n\n", "\n".join(lines)).strip()


def html_to_text(html: str | None) -> str:
    """Turn a rich-text HTML fragment into plain text with paragraph breaks kept.

    Args:
        html: the fragment (``None`` and ``""`` give ``""``).

    Returns:
        Text with one blank line between paragraphs, no markup, no script or style content.
    """
    if not html:
        return ""
    if "<" not in html and "&" not in html:
        return _tidy(html)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MarkupResemblesLocatorWarning)
        soup = BeautifulSoup(html, "html.parser")
    for tag in soup.find_all(_DROP):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    return _tidy(soup.get_text())


def markdown_to_text(markdown: str | None) -> str:
    """Plain text of a Markdown model card body: code blocks, images and inline HTML dropped."""
    if not markdown:
        return ""
    text = _FENCE.sub("\n", markdown)
    text = _MD_IMAGE.sub("", text)
    text = _MD_LINK.sub(r"\1", text)
    text = html_to_text(text) if "<" in text else text
    text = _MD_HEADING.sub("", text)
    text = _MD_EMPH.sub("", text)
    return _tidy(text)
