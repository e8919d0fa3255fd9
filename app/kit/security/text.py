"""User text that may be shown as HTML: sanitised with nh3 (ammonia)."""

from __future__ import annotations

import html

import nh3

from app.kit.errors import ValidationError


def plain_text(value: str, *, max_length: int) -> str:
    """Strip every tag (titles and names are plain text), unescape entities, trim."""
    cleaned = html.unescape(nh3.clean(value, tags=set(), attributes={})).strip()
    cleaned = " ".join(cleaned.split())
    if not cleaned:
        raise ValidationError("The text is empty once HTML is removed.")
    return cleaned[:max_length]


def safe_html(value: str) -> str:
    """A small allowlist of formatting tags for rich text (notes, documents)."""
    return nh3.clean(
        value,
        tags={"p", "br", "strong", "em", "ul", "ol", "li", "code", "pre", "blockquote", "a"},
        attributes={"a": {"href", "title"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
