"""Cut a transcript into overlapping, token-bounded chunks for embedding and search.

The cuts follow the text's own structure: a chunk ends at a paragraph break when it is at
least half full, otherwise at a sentence end, and only a sentence longer than the whole budget
is cut inside (at word boundaries, or between tokens for a "word" that alone exceeds it).
Consecutive chunks share their last/first whole sentences (up to ``overlap_tokens``), so a
passage that straddles a cut is still found whole by one of them.

Each chunk carries the start of the first and the end of the last transcript segment its text
came from, so a search hit or a chat citation can jump to that moment of the recording.

Tokens are counted by ``app.ai.text.count_tokens``, an approximation of BPE tokens. The budget
must stay under what the embedding model reads, or the tail of every chunk is invisible to
vector search: the local MiniLM reads 256 word pieces including [CLS] and [SEP], and measured
here one approximate token is 1.0 word piece on conversational speech (1.25 on technical
prose). Hence a default of 250 (about 1.5 minutes of speech); with OpenAI's embedding models
(8191 tokens) a larger budget is fine.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from app.ai.text import count_tokens, paragraph_spans, sentence_spans, token_spans


class TimedText(Protocol):
    """A transcript segment: anything with start/end seconds and text."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    max_tokens: int = 250
    overlap_tokens: int = 50
    # A silence this long between two segments reads as a change of topic or speaker: a
    # paragraph break, where a chunk prefers to end.
    paragraph_gap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise ValueError("overlap_tokens must be >= 0 and below max_tokens")


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    text: str
    token_count: int
    start_seconds: float
    end_seconds: float
    # How many of this chunk's first tokens repeat the end of the previous chunk.
    overlap_token_count: int = 0


@dataclass(frozen=True, slots=True)
class _Unit:
    """A sentence, or a piece of an over-long one, with the time span of its segments."""

    text: str
    tokens: int
    start: float
    end: float
    paragraph_start: bool


def chunk_transcript(
    segments: Sequence[TimedText], config: ChunkingConfig | None = None
) -> list[Chunk]:
    config = config or ChunkingConfig()
    units = _units(segments, config)
    chunks: list[list[_Unit]] = []
    overlaps: list[int] = []
    current: list[_Unit] = []
    current_tokens = 0
    carried = 0  # tokens at the head of `current` copied from the previous chunk

    def flush() -> None:
        nonlocal current, current_tokens, carried
        chunks.append(current)
        overlaps.append(carried)
        current = _overlap_tail(current, config.overlap_tokens)
        current_tokens = sum(u.tokens for u in current)
        carried = current_tokens

    for unit in units:
        # Prefer a paragraph break as the cut once the chunk is at least half full.
        at_break = unit.paragraph_start and current_tokens - carried >= config.max_tokens // 2
        if current_tokens > carried and (
            at_break or current_tokens + unit.tokens > config.max_tokens
        ):
            flush()
        # The overlap gives way to new text: drop carried sentences until the unit fits.
        while current and current_tokens + unit.tokens > config.max_tokens:
            current_tokens -= current.pop(0).tokens
            carried = current_tokens
        current.append(unit)
        current_tokens += unit.tokens
    if current_tokens > carried:
        chunks.append(current)
        overlaps.append(carried)

    out: list[Chunk] = []
    for index, (units_in_chunk, overlap) in enumerate(zip(chunks, overlaps, strict=True)):
        text = _join(units_in_chunk)
        out.append(
            Chunk(
                index=index,
                text=text,
                token_count=count_tokens(text),
                start_seconds=min(u.start for u in units_in_chunk),
                end_seconds=max(u.end for u in units_in_chunk),
                overlap_token_count=overlap,
            )
        )
    return out


def _overlap_tail(units: list[_Unit], budget: int) -> list[_Unit]:
    """The last whole units of a chunk whose tokens add up to at most ``budget``."""
    tail: list[_Unit] = []
    total = 0
    for unit in reversed(units):
        if total + unit.tokens > budget:
            break
        tail.insert(0, unit)
        total += unit.tokens
    # Re-used text never opens a paragraph: the new chunk's own text decides that.
    return [_Unit(u.text, u.tokens, u.start, u.end, False) for u in tail]


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    for i, unit in enumerate(units):
        if i:
            parts.append("\n\n" if unit.paragraph_start else " ")
        parts.append(unit.text)
    return "".join(parts)


def _units(segments: Sequence[TimedText], config: ChunkingConfig) -> list[_Unit]:
    """Sentences of the whole transcript, each timed by the segments it overlaps.

    The segments' texts are joined into one string first, so a sentence that runs across two
    segments stays one sentence, and a segment holding three sentences yields three.
    """
    ordered = sorted(
        (s for s in segments if s.text.strip()), key=lambda s: (float(s.start), float(s.end))
    )
    if not ordered:
        return []
    pieces: list[str] = []
    offsets: list[int] = []  # character offset where each segment's text starts
    times: list[tuple[float, float]] = []
    length = 0
    previous_end: float | None = None
    for segment in ordered:
        start, end = float(segment.start), max(float(segment.start), float(segment.end))
        if previous_end is not None:
            gap = start - previous_end
            separator = "\n\n" if gap >= config.paragraph_gap_seconds else " "
            pieces.append(separator)
            length += len(separator)
        text = segment.text.strip()
        offsets.append(length)
        times.append((start, end))
        pieces.append(text)
        length += len(text)
        previous_end = end if previous_end is None else max(previous_end, end)
    full = "".join(pieces)

    units: list[_Unit] = []
    for p_start, p_end in paragraph_spans(full):
        first_in_paragraph = True
        for s_start, s_end in sentence_spans(full, p_start, p_end):
            first = bisect.bisect_right(offsets, s_start) - 1
            last = bisect.bisect_right(offsets, s_end - 1) - 1
            start = min(t[0] for t in times[first : last + 1])
            end = max(t[1] for t in times[first : last + 1])
            for piece in _fit(full[s_start:s_end], config.max_tokens):
                units.append(_Unit(piece, count_tokens(piece), start, end, first_in_paragraph))
                first_in_paragraph = False
    return units


_WORD = re.compile(r"\S+")


def _fit(sentence: str, budget: int) -> list[str]:
    """``sentence`` as pieces of at most ``budget`` tokens, cut between words where possible."""
    if count_tokens(sentence) <= budget:
        return [sentence]
    pieces: list[str] = []
    words: list[str] = []
    used = 0
    for word in _WORD.findall(sentence):
        tokens = count_tokens(word)
        if used + tokens > budget and words:
            pieces.append(" ".join(words))
            words, used = [], 0
        if tokens > budget:
            # One "word" over the whole budget (a URL, a run of symbols): cut it between tokens,
            # which never splits a run of letters or digits.
            spans = token_spans(word)
            for i in range(0, len(spans), budget):
                group = spans[i : i + budget]
                pieces.append(word[group[0][0] : group[-1][1]])
            continue
        words.append(word)
        used += tokens
    if words:
        pieces.append(" ".join(words))
    return pieces
