"""User text: plain text (titles, names) kept as typed, rich text sanitised with nh3 (ammonia).

Plain text is never HTML-cleaned and never unescaped: a title "a < b & c" is stored as exactly
that, and whoever renders HTML escapes it. Cleaning and then unescaping turned the text
``&lt;img src=x onerror=alert(1)&gt;`` into a live tag, so plain text goes nowhere near HTML.
"""

from __future__ import annotations

import unicodedata

import nh3

from app.kit.errors import ValidationError

# Explicit direction embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): a
# title needs none of them (the bidi algorithm lays out Hebrew or Arabic text unaided), and
# they can make a name display as something other than what it is ("Trojan Source").
_BIDI_CONTROLS = frozenset(chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))


def _visible(char: str) -> bool:
    # Category Cc is C0, DEL and C1; whitespace among them (tab, newline) is folded by the
    # caller's split, so it is kept here.
    if char.isspace():
        return True
    return unicodedata.category(char) != "Cc" and char not in _BIDI_CONTROLS


def plain_text(value: str, *, max_length: int) -> str:
    """One line of text as given: control characters dropped, whitespace runs folded to one
    space (a title or name has no line breaks), trimmed and cut to ``max_length``."""
    cleaned = " ".join("".join(filter(_visible, value)).split())
    if not cleaned:
        raise ValidationError("The text is empty once control characters and spaces are removed.")
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
