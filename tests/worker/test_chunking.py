"""Transcript chunking: paragraphs, overlap, sentence boundaries, and properties that hold for
any transcript (no text lost, budgets kept, timestamps ordered)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.ai.text import count_tokens, tokenize
from worker.chunking import Chunk, ChunkingConfig, chunk_transcript


@dataclass(frozen=True)
class Seg:
    start: float
    end: float
    text: str


def sentence(n: int, words: int = 8) -> str:
    return " ".join(f"S{n}w{i}" for i in range(words)) + "."


def deoverlapped_tokens(chunks: list[Chunk]) -> list[str]:
    tokens: list[str] = []
    for chunk in chunks:
        tokens.extend(tokenize(chunk.text)[chunk.overlap_token_count :])
    return tokens


# Paragraphs.


def test_a_long_pause_starts_a_paragraph_where_a_half_full_chunk_ends() -> None:
    segments = [
        Seg(0, 5, " ".join(sentence(i) for i in range(3))),  # 27 tokens
        Seg(10, 15, " ".join(sentence(i) for i in range(3, 5))),  # after a 5 s silence
    ]
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=50, overlap_tokens=0))
    assert [c.text for c in chunks] == [segments[0].text, segments[1].text]
    assert (chunks[1].start_seconds, chunks[1].end_seconds) == (10, 15)


def test_paragraphs_that_fit_share_a_chunk_and_keep_their_break() -> None:
    segments = [Seg(0, 2, sentence(1)), Seg(5, 7, sentence(2))]
    [chunk] = chunk_transcript(segments)
    assert chunk.text == f"{sentence(1)}\n\n{sentence(2)}"
    assert (chunk.start_seconds, chunk.end_seconds) == (0, 7)


def test_a_blank_line_inside_segment_text_is_a_paragraph_break() -> None:
    text = " ".join(sentence(i) for i in range(3)) + "\n\n" + sentence(9)
    chunks = chunk_transcript([Seg(0, 30, text)], ChunkingConfig(max_tokens=40, overlap_tokens=0))
    assert chunks[-1].text == sentence(9)


def test_a_short_chunk_does_not_end_at_a_paragraph_break() -> None:
    # Less than half the budget used: cutting here would waste a chunk on one sentence.
    segments = [Seg(0, 2, sentence(1)), Seg(5, 7, sentence(2)), Seg(7, 9, sentence(3))]
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=25, overlap_tokens=0))
    assert chunks[0].text == f"{sentence(1)}\n\n{sentence(2)}"


# Overlap.


def test_consecutive_chunks_share_whole_sentences_up_to_the_overlap() -> None:
    segments = [Seg(i * 3, i * 3 + 3, sentence(i)) for i in range(12)]  # 9 tokens each
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=40, overlap_tokens=20))
    assert len(chunks) > 2
    for previous, chunk in itertools.pairwise(chunks):
        assert chunk.overlap_token_count == 18  # two whole sentences; a third would pass 20
        shared = tokenize(chunk.text)[: chunk.overlap_token_count]
        assert shared == tokenize(previous.text)[-chunk.overlap_token_count :]
        assert chunk.text.startswith(previous.text.split(". ")[-2].split(" ", 1)[0])
    assert deoverlapped_tokens(chunks) == tokenize(" ".join(s.text for s in segments))


def test_zero_overlap_shares_nothing() -> None:
    segments = [Seg(i, i + 1, sentence(i)) for i in range(10)]
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=30, overlap_tokens=0))
    assert all(c.overlap_token_count == 0 for c in chunks)
    assert sum(c.token_count for c in chunks) == 90


def test_a_sentence_longer_than_the_overlap_is_not_repeated() -> None:
    segments = [Seg(i, i + 1, sentence(i, words=20)) for i in range(3)]
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=30, overlap_tokens=10))
    assert [c.overlap_token_count for c in chunks] == [0, 0, 0]


def test_the_overlap_gives_way_when_the_next_sentence_needs_the_room() -> None:
    segments = [Seg(0, 1, sentence(0, words=4)), Seg(1, 2, sentence(1, words=18))]
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=20, overlap_tokens=10))
    assert [c.overlap_token_count for c in chunks] == [0, 0]
    assert chunks[1].text == sentence(1, words=18)


# Sentence boundaries.


def test_chunks_end_at_sentence_ends() -> None:
    text = "First point is short. Second point, however, has a clause! Is a third needed? Yes."
    chunks = chunk_transcript([Seg(0, 10, text)], ChunkingConfig(max_tokens=12, overlap_tokens=0))
    assert [c.text for c in chunks] == [
        "First point is short.",
        "Second point, however, has a clause!",
        "Is a third needed? Yes.",
    ]


def test_a_sentence_across_segments_stays_whole_and_spans_both() -> None:
    segments = [
        Seg(0, 2, "We will ship the"),
        Seg(2, 4, "release on Monday. Then we rest."),
        Seg(4, 6, "Dr. Smith agrees."),
    ]
    chunks = chunk_transcript(segments, ChunkingConfig(max_tokens=8, overlap_tokens=0))
    assert [(c.text, c.start_seconds, c.end_seconds) for c in chunks] == [
        ("We will ship the release on Monday.", 0, 4),
        ("Then we rest.", 2, 4),
        ("Dr. Smith agrees.", 4, 6),  # "Dr." is not a sentence end
    ]


def test_a_sentence_over_the_budget_is_cut_between_words() -> None:
    words = [f"word{i}" for i in range(25)]
    chunks = chunk_transcript(
        [Seg(0, 9, " ".join(words) + ".")], ChunkingConfig(max_tokens=10, overlap_tokens=2)
    )
    assert all(c.token_count <= 10 for c in chunks)
    assert " ".join(c.text for c in chunks).removesuffix(".").split() == words
    assert all((c.start_seconds, c.end_seconds) == (0, 9) for c in chunks)


def test_a_word_over_the_budget_is_cut_between_tokens() -> None:
    chunks = chunk_transcript(
        [Seg(0, 1, "a-b-c-d-e-f")], ChunkingConfig(max_tokens=4, overlap_tokens=0)
    )
    assert [c.text for c in chunks] == ["a-b-", "c-d-", "e-f"]


# Edges and configuration.


def test_no_text_gives_no_chunks() -> None:
    assert chunk_transcript([]) == []
    assert chunk_transcript([Seg(0, 1, "   "), Seg(1, 2, "")]) == []


def test_segments_are_read_in_time_order() -> None:
    chunks = chunk_transcript([Seg(1, 2, "Second."), Seg(0, 1, "First.")])
    assert chunks[0].text == "First. Second."


@pytest.mark.parametrize(("max_tokens", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_bad_budgets_are_refused(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="tokens"):
        ChunkingConfig(max_tokens=max_tokens, overlap_tokens=overlap)


# Properties.

_word = st.one_of(
    st.from_regex(r"[A-Za-z][a-z]{0,8}", fullmatch=True),
    st.from_regex(r"[0-9]{1,4}(\.[0-9])?", fullmatch=True),
    st.sampled_from(["Dr.", "e.g.", "U.S.", "--", "it's", "(aside)", "\u2026", "https://x.io/a?b"]),
)
_sentence = st.builds(
    lambda words, end: " ".join(words) + end,
    st.lists(_word, min_size=1, max_size=30),
    st.sampled_from([".", "?", "!", "", "..."]),
)
_segment_text = st.builds(
    lambda sentences, paragraph: ("\n\n" if paragraph else " ").join(sentences),
    st.lists(_sentence, min_size=0, max_size=4),
    st.booleans(),
)


@st.composite
def transcripts(draw: st.DrawFn) -> list[Seg]:
    texts = draw(st.lists(_segment_text, min_size=0, max_size=12))
    segments = []
    clock = draw(st.floats(0, 100, allow_nan=False))
    for text in texts:
        clock += draw(st.floats(0, 5, allow_nan=False))  # silence, sometimes a paragraph gap
        duration = draw(st.floats(0, 20, allow_nan=False))
        segments.append(Seg(clock, clock + duration, text))
        clock += duration
    return segments


@st.composite
def configs(draw: st.DrawFn) -> ChunkingConfig:
    max_tokens = draw(st.integers(1, 80))
    return ChunkingConfig(
        max_tokens=max_tokens, overlap_tokens=draw(st.integers(0, max_tokens - 1))
    )


@settings(max_examples=300, deadline=None)
@given(transcripts(), configs())
def test_properties_hold_for_any_transcript(segments: list[Seg], config: ChunkingConfig) -> None:
    chunks = chunk_transcript(segments, config)

    # No text lost or invented: with each chunk's repeated head removed, the chunks' tokens are
    # exactly the transcript's, in order.
    ordered = sorted(segments, key=lambda s: (s.start, s.end))
    assert deoverlapped_tokens(chunks) == tokenize(" ".join(s.text for s in ordered))

    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert 0 < chunk.token_count <= config.max_tokens
        assert chunk.token_count == count_tokens(chunk.text)
        assert chunk.overlap_token_count <= config.overlap_tokens
        assert chunk.overlap_token_count < chunk.token_count  # every chunk brings new text
        assert chunk.start_seconds <= chunk.end_seconds
        if i:
            previous = chunks[i - 1]
            head = tokenize(chunk.text)[: chunk.overlap_token_count]
            assert head == tokenize(previous.text)[len(tokenize(previous.text)) - len(head) :]
            assert previous.start_seconds <= chunk.start_seconds
            assert previous.end_seconds <= chunk.end_seconds

    if chunks:
        spoken = [s for s in segments if s.text.strip()]
        assert chunks[0].start_seconds >= min(s.start for s in spoken)
        assert chunks[-1].end_seconds <= max(s.end for s in spoken)
