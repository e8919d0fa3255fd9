"""The prompt conventions the app and every model server share.

Chat context: passages travel in a system message, after a line ``Context:``, one per line
block, each introduced by its citation marker at the start of a line::

    Answer from the context. Cite passages as [n].
    Context:
    [1] (00:12:03) We agreed to move the launch to May.
    [2] (00:14:40) Alice will send the revised budget on Friday.

A passage runs from its marker to the next line that starts with a marker (or the end of the
message), so it may span several lines. A real LLM reads this as plain instructions; the local
extractive answerer parses it (``parse_passages``) and cites the same numbers, so the app maps
``[n]`` back to a chunk and a moment in the recording whichever server answers.

Documents: the transcript goes in the user message, and the system message asks for one JSON
object with the keys in ``DOCUMENT_KEYS`` (``response_format={"type": "json_object"}``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CONTEXT_HEADER = "Context:"
CITATION = re.compile(r"\[(\d{1,4})\]")
_PASSAGE_START = re.compile(r"^[ \t]*\[(\d{1,4})\][ \t]*", re.M)

ANSWER_INSTRUCTIONS = (
    "You answer questions about meeting recordings using only the numbered context passages. "
    "After each sentence, cite the passage it comes from as [n]. If the passages do not hold "
    "the answer, say so."
)

DOCUMENT_KEYS = ("title", "summary", "key_points", "action_items")
DOCUMENT_INSTRUCTIONS = (
    "You write meeting notes from a transcript. Reply with one JSON object with the keys "
    '"title" (a short string), "summary" (a paragraph), "key_points" (a list of strings) and '
    '"action_items" (a list of strings: who does what, by when, if said). Use only facts from '
    "the transcript."
)


@dataclass(frozen=True, slots=True)
class Passage:
    number: int
    text: str


def format_context(passages: Sequence[str], *, instructions: str = ANSWER_INSTRUCTIONS) -> str:
    """The system message for a cited answer: passage i (0-based) is cited as [i + 1]."""
    lines = [instructions, CONTEXT_HEADER]
    for number, passage in enumerate(passages, start=1):
        # A newline followed by "[k]" inside a passage would start a new passage when parsed.
        flat = " ".join(passage.split())
        lines.append(f"[{number}] {flat}")
    return "\n".join(lines)


def parse_passages(text: str) -> list[Passage]:
    """The numbered passages of a message written by ``format_context`` (or by hand, same rules)."""
    starts = list(_PASSAGE_START.finditer(text))
    passages: list[Passage] = []
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[match.end() : end].strip()
        if body:
            passages.append(Passage(int(match.group(1)), body))
    return passages


def cited_numbers(answer: str) -> list[int]:
    """The distinct passage numbers an answer cites, in the order it first cites them."""
    seen: dict[int, None] = {}
    for match in CITATION.finditer(answer):
        seen.setdefault(int(match.group(1)), None)
    return list(seen)
