"""Text measures shared by the chunker, the clients and the extractive answerer.

Token counts here approximate BPE tokens (OpenAI's cl100k/o200k) with a regex: a run of word
characters is one token, every other non-space character is one token. On English meeting speech
that lands within about 15% of cl100k, deterministically and with no vocabulary file to download
(tiktoken fetches its encodings at run time, which this project forbids). Budgets built on it
keep a margin for that error.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")

# A sentence ends at terminal punctuation (plus closing quotes/brackets) followed by whitespace,
# unless the next word starts in lower case ("e.g. the", "... and then") or the period belongs to
# a common abbreviation ("Dr. Smith"). Whisper punctuates and capitalises, so this is enough for
# transcripts; it is not a general-purpose sentence tokenizer.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s+(?![a-z])|\s*$)")
_ABBREVIATIONS = frozenset(
    {
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "inc",
        "ltd",
        "co",
        "no",
        "approx",
        "dept",
        "est",
        "fig",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
    }
)
_LAST_WORD = re.compile(r"([\w.]+)$")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")


def tokenize(text: str) -> list[str]:
    """The approximate BPE tokens of ``text`` (see the module docstring)."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    return sum(1 for _ in _TOKEN.finditer(text))


def token_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token, for cutting text at token boundaries."""
    return [m.span() for m in _TOKEN.finditer(text)]


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def paragraph_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) offsets of the paragraphs of ``text``: runs separated by a blank line."""
    spans: list[tuple[int, int]] = []
    position = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        start, end = _strip_span(text, position, match.start())
        if start < end:
            spans.append((start, end))
        position = match.end()
    start, end = _strip_span(text, position, len(text))
    if start < end:
        spans.append((start, end))
    return spans


def _is_abbreviation(text: str, end_of_punctuation: int) -> bool:
    match = _LAST_WORD.search(text, 0, end_of_punctuation)
    if match is None:
        return False
    word = match.group(1).rstrip(".").lower()
    # A single capital letter before a period is an initial ("J. Smith"), not a sentence end.
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) offsets of the sentences of ``text[start:end]``, whitespace trimmed."""
    stop = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    position = start
    for match in _SENTENCE_END.finditer(text, start, stop):
        single_period = match.group(0).rstrip("\"'\u201d\u2019)]") == "."
        if single_period and _is_abbreviation(text, match.start()):
            continue
        s, e = _strip_span(text, position, match.end())
        if s < e:
            spans.append((s, e))
        position = match.end()
    s, e = _strip_span(text, position, stop)
    if s < e:
        spans.append((s, e))
    return spans


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``, paragraph by paragraph (a paragraph break ends a sentence)."""
    return [text[s:e] for ps, pe in paragraph_spans(text) for s, e in sentence_spans(text, ps, pe)]
