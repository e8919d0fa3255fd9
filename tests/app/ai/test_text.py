"""Token counts, sentence and paragraph splitting, and the prompt conventions."""

from __future__ import annotations

import pytest

from app.ai.prompts import (
    ANSWER_INSTRUCTIONS,
    CONTEXT_HEADER,
    Passage,
    cited_numbers,
    format_context,
    parse_passages,
)
from app.ai.text import count_tokens, paragraph_spans, split_sentences, token_spans, tokenize


def test_tokens_are_word_runs_and_single_symbols() -> None:
    assert tokenize("It's 3.5% of Q3, right?") == [
        "It",
        "'",
        "s",
        "3",
        ".",
        "5",
        "%",
        "of",
        "Q3",
        ",",
        "right",
        "?",
    ]
    assert count_tokens("  ") == 0
    assert count_tokens("naïve café") == 2
    text = "a-b c"
    assert [text[s:e] for s, e in token_spans(text)] == ["a", "-", "b", "c"]


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Dr. Smith met Mr. Jones. They agreed.", ["Dr. Smith met Mr. Jones.", "They agreed."]),
        ("J. R. Tolkien wrote it. Yes.", ["J. R. Tolkien wrote it.", "Yes."]),
        ("It costs 3.5 million. Fine.", ["It costs 3.5 million.", "Fine."]),
        ("Use e.g. the API. Done.", ["Use e.g. the API.", "Done."]),
        ("Wait... what happened? Nothing.", ["Wait... what happened?", "Nothing."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("First line\n\nsecond paragraph", ["First line", "second paragraph"]),
        ("   ", []),
    ],
)
def test_sentences(text: str, sentences: list[str]) -> None:
    assert split_sentences(text) == sentences


def test_paragraph_spans_skip_blank_runs() -> None:
    text = "\n\nA b.\n \n\n  C d.\n\n"
    assert [text[s:e] for s, e in paragraph_spans(text)] == ["A b.", "C d."]


def test_context_round_trips_through_the_convention() -> None:
    message = format_context(["First passage.\n[7] not a marker", "  Second\tpassage. "])
    assert message.splitlines()[:2] == [ANSWER_INSTRUCTIONS, CONTEXT_HEADER]
    assert parse_passages(message) == [
        Passage(1, "First passage. [7] not a marker"),
        Passage(2, "Second passage."),
    ]


def test_hand_written_passages_may_span_lines() -> None:
    text = "Use these:\n[1] line one\ncontinues\n  [2] two\n[3]\n"
    assert parse_passages(text) == [Passage(1, "line one\ncontinues"), Passage(2, "two")]


def test_cited_numbers_in_first_citation_order() -> None:
    assert cited_numbers("A [2]. B [1][2]. C [10].") == [2, 1, 10]
