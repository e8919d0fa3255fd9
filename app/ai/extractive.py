"""The local chat model: answers by quoting the context, never by generating text.

It exists so the whole product (cited chat, meeting notes) runs offline with no LLM. It reads
the conventions of ``app.ai.prompts``:

- Answers: every sentence of the numbered context passages is scored by cosine similarity
  between its MiniLM embedding and the question's (the same model the search index uses, so
  "relevant" means what it means in search). The best few sentences above a floor (absolute,
  and relative to the best score) are returned in passage order, each followed by its
  passage's ``[n]``; near-duplicates are quoted once.
- Documents: sentences are ranked by centrality (cosine similarity to the centroid of all
  sentence vectors, i.e. how typical a sentence is of the whole meeting); the summary is the
  three most central distinct sentences (maximal marginal relevance) in transcript order, key
  points the five most central distinct ones, the title the most central one shortened, and
  action items the sentences carrying an action cue ("will", "should", "need to", "let's", ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from app.ai.prompts import Passage, parse_passages
from app.ai.text import split_sentences

MODEL_ID = "record-extractive-1"

Embed = Callable[[list[str]], npt.NDArray[np.float32]]

# MiniLM cosine between a question and an unrelated sentence sits around 0.0-0.15; a sentence
# that shares the topic scores 0.3 and up. Below the floor the answer says it found nothing.
RELEVANCE_FLOOR = 0.2
# ...and a sentence scoring under half the best one is a topical neighbour, not an answer
# (seen: "Lunch moves to the terrace" at 0.24 beside the launch-date answer at 0.55).
RELATIVE_FLOOR = 0.5
MAX_ANSWER_SENTENCES = 3
# Two sentences this similar say the same thing: quote only the better one. (0.9 let through a
# transcript's "Alice will send the report on Friday." beside "That is we'll send the report
# on Friday.")
DUPLICATE_SIMILARITY = 0.8
NOT_FOUND = "I could not find that in the recordings."
NO_CONTEXT = "There is nothing to answer from: no context passages were given."

_ACTION_CUE = re.compile(
    r"\b(will|should|need(?:s)? to|have to|has to|must|let'?s|let us|to-?do|action items?|"
    r"follow[- ]up|going to|assign(?:ed)?|deadline|by (?:monday|tuesday|wednesday|thursday|"
    r"friday|saturday|sunday|tomorrow|next week|end of (?:day|week|month)))\b|\w['\u2019]ll\b",
    re.I,
)
_MIN_KEY_POINT_WORDS = 4
_TITLE_WORDS = 8


@dataclass(frozen=True, slots=True)
class CitedSentence:
    text: str
    passage: int
    score: float


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    citations: list[CitedSentence]


class ExtractiveAnswerer:
    def __init__(self, embed: Embed) -> None:
        self._embed = embed

    def answer(
        self, question: str, passages: list[Passage], *, max_sentences: int = MAX_ANSWER_SENTENCES
    ) -> Answer:
        candidates = [
            (position, passage.number, sentence)
            for position, passage in enumerate(passages)
            for sentence in split_sentences(passage.text)
        ]
        if not candidates:
            return Answer(NO_CONTEXT, [])
        if not question.strip():
            return Answer(NOT_FOUND, [])
        vectors = self._embed([question] + [sentence for _, _, sentence in candidates])
        scores = vectors[1:] @ vectors[0]
        floor = max(RELEVANCE_FLOOR, RELATIVE_FLOOR * float(scores.max()))
        chosen: list[int] = []
        for index in np.argsort(-scores, kind="stable"):
            if scores[index] < floor or len(chosen) == max_sentences:
                break
            similarities = (float(vectors[1 + index] @ vectors[1 + j]) for j in chosen)
            if any(similarity >= DUPLICATE_SIMILARITY for similarity in similarities):
                continue
            chosen.append(int(index))
        if not chosen:
            return Answer(NOT_FOUND, [])
        # Passage order, then sentence order, reads like the meeting unfolded.
        chosen.sort()
        cited = [
            CitedSentence(candidates[i][2], candidates[i][1], round(float(scores[i]), 4))
            for i in chosen
        ]
        text = " ".join(f"{c.text} [{c.passage}]" for c in cited)
        return Answer(text, cited)

    def document(self, source: str) -> dict[str, Any]:
        """title, summary, key_points, action_items, all quoted from ``source``."""
        sentences = _distinct(split_sentences(source))
        if not sentences:
            return {
                "title": "Untitled recording",
                "summary": "",
                "key_points": [],
                "action_items": [],
            }
        vectors = self._embed(sentences)
        centroid = vectors.mean(axis=0)
        norm = float(np.linalg.norm(centroid))
        centrality = vectors @ (centroid / norm) if norm > 0 else np.zeros(len(sentences))
        ranked = [int(i) for i in np.argsort(-centrality, kind="stable")]

        informative = [i for i in ranked if len(sentences[i].split()) >= _MIN_KEY_POINT_WORDS]
        candidates = informative or ranked
        # Speech repeats itself; without the redundancy penalty the summary was the same
        # sentence three times in slightly different words.
        summary_ids = _maximal_marginal_relevance(candidates, vectors, centrality, limit=3)
        key_ids = _maximal_marginal_relevance(candidates, vectors, centrality, limit=5)
        action_items = [s for s in sentences if _ACTION_CUE.search(s)][:10]
        return {
            "title": _title(sentences[candidates[0]]),
            "summary": " ".join(sentences[i] for i in sorted(summary_ids)),
            "key_points": [sentences[i] for i in sorted(key_ids)],
            "action_items": action_items,
        }


def passages_from_messages(messages: Sequence[tuple[str, str]]) -> list[Passage]:
    """Passages from the system/developer messages, in order (see ``app.ai.prompts``)."""
    passages: list[Passage] = []
    for role, content in messages:
        if role in {"system", "developer"}:
            passages.extend(parse_passages(content))
    return passages


def _distinct(sentences: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for sentence in sentences:
        key = " ".join(sentence.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(sentence)
    return out


def _maximal_marginal_relevance(
    candidates: list[int],
    vectors: npt.NDArray[np.float32],
    relevance: Any,
    *,
    limit: int,
    trade_off: float = 0.7,
) -> list[int]:
    """Pick central sentences that do not repeat each other (Carbonell & Goldstein, 1998)."""
    picked: list[int] = []
    pool = list(candidates)

    def redundancy(i: int) -> float:
        return max((float(vectors[i] @ vectors[j]) for j in picked), default=0.0)

    while pool and len(picked) < limit:
        # A near-duplicate of a sentence already picked is never worth its place.
        pool = [i for i in pool if redundancy(i) < DUPLICATE_SIMILARITY]
        if not pool:
            break
        best = max(
            pool, key=lambda i: trade_off * float(relevance[i]) - (1 - trade_off) * redundancy(i)
        )
        picked.append(best)
        pool.remove(best)
    return picked


def _title(sentence: str) -> str:
    words = sentence.rstrip(".!?\u2026 ").split()
    if len(words) <= _TITLE_WORDS:
        return " ".join(words)
    return " ".join(words[:_TITLE_WORDS]).rstrip(",;:") + "\u2026"
