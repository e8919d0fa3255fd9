"""How Argo Rollouts judges a Prometheus measurement, emulated for the canary tests.

No Python package evaluates Argo's condition language (expr, github.com/expr-lang/expr), so
this module holds a small evaluator for the part of it an AnalysisTemplate of ours may use, and
refuses anything else rather than guess. What it reproduces, from argo-rollouts v1.8:

* ``metricproviders/prometheus``: a vector result becomes ``result``, a list of its sample
  values (an empty vector is an empty list); a scalar becomes one float.
* ``utils/evaluate.EvalCondition``: the env holds ``result``, ``isNaN`` and ``isInf``; ``len``
  is an expr builtin. A runtime error (``result[0]`` of an empty list) is an error, not false.
* ``utils/evaluate.EvaluateResult``: with only a success condition, not meeting it fails; with
  both, neither holding is inconclusive; a condition that errors makes the measurement Error.
* ``analysis.assessMetricFailureInconclusiveOrError``: a metric fails once failed measurements
  exceed ``failureLimit`` (default 0), is inconclusive once inconclusive ones exceed
  ``inconclusiveLimit`` (default 0), errs once consecutive errors exceed
  ``consecutiveErrorLimit`` (default 4); a metric without ``count`` otherwise keeps running.

Operators follow expr's precedence: ``||`` below ``&&`` below comparisons below unary ``!``
below calls and indexing. ``&&`` and ``||`` short-circuit, as expr's compiled jumps do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4


class Phase(StrEnum):
    SUCCESSFUL = "Successful"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"
    ERROR = "Error"
    RUNNING = "Running"


class ExprError(Exception):
    """A condition expr would not compile or would fail at run time."""


_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>&&|\|\||>=|<=|==|!=|[!<>()\[\]]))"
)
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExprError(f"unsupported syntax at {text[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Evaluator:
    """Recursive descent over the tokens, evaluating as it goes (lazily for && and ||)."""

    def __init__(self, text: str, env: dict[str, Any]) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.env = env

    def run(self) -> Any:
        value = self.disjunction(True)
        if self.pos != len(self.tokens):
            raise ExprError(f"unexpected {self.tokens[self.pos][1]!r}")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ExprError("unexpected end of condition")
        token = self.tokens[self.pos]
        if expected is not None and token[1] != expected:
            raise ExprError(f"expected {expected!r}, got {token[1]!r}")
        self.pos += 1
        return token

    # Each level takes `live`: False while skipping the right side of a short circuit, so the
    # skipped part is parsed (syntax errors still count) but not evaluated.
    def disjunction(self, live: bool) -> Any:
        value = self.conjunction(live)
        while self.peek() == "||":
            self.take()
            right = self.conjunction(live and not value)
            value = bool(value) or bool(right)
        return value

    def conjunction(self, live: bool) -> Any:
        value = self.comparison(live)
        while self.peek() == "&&":
            self.take()
            right = self.comparison(live and bool(value))
            value = bool(value) and bool(right)
        return value

    def comparison(self, live: bool) -> Any:
        value = self.unary(live)
        while self.peek() in _COMPARE:
            op = self.take()[1]
            right = self.unary(live)
            value = _COMPARE[op](value, right) if live else False
        return value

    def unary(self, live: bool) -> Any:
        if self.peek() == "!":
            self.take()
            operand = self.unary(live)
            return not operand if live else False
        return self.postfix(live)

    def postfix(self, live: bool) -> Any:
        value = self.primary(live)
        while self.peek() in ("(", "["):
            if self.take()[1] == "(":
                arg = self.disjunction(live)
                self.take(")")
                value = value(arg) if live else None
            else:
                index = self.disjunction(live)
                self.take("]")
                if live:
                    if not isinstance(index, int) or not -len(value) <= index < len(value):
                        raise ExprError(f"index out of range: {index} (array length {len(value)})")
                    value = value[index]
        return value

    def primary(self, live: bool) -> Any:
        kind, text = self.take()
        if kind == "number":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "name":
            if text not in self.env:
                raise ExprError(f"unknown name {text}")
            return self.env[text]
        if text == "(":
            value = self.disjunction(live)
            self.take(")")
            return value
        raise ExprError(f"unexpected {text!r}")


def eval_condition(result: Any, condition: str) -> bool:
    env = {
        "result": result,
        "true": True,
        "false": False,
        "len": len,
        "isNaN": math.isnan,
        "isInf": math.isinf,
    }
    output = _Evaluator(condition, env).run()
    if not isinstance(output, bool):
        raise ExprError(f"expected bool, but got {type(output).__name__}")
    return output


def evaluate_result(result: Any, metric: dict[str, Any]) -> Phase:
    """One measurement's phase, as utils/evaluate.EvaluateResult decides it."""
    success_condition = metric.get("successCondition", "")
    failure_condition = metric.get("failureCondition", "")
    success = failure = False
    try:
        if success_condition:
            success = eval_condition(result, success_condition)
        if failure_condition:
            failure = eval_condition(result, failure_condition)
    except ExprError:
        return Phase.ERROR
    if not success_condition and not failure_condition:
        return Phase.SUCCESSFUL
    if success_condition and not failure_condition:
        failure = not success
    elif failure_condition and not success_condition:
        success = not failure
    if failure:
        return Phase.FAILED
    if not success:
        return Phase.INCONCLUSIVE
    return Phase.SUCCESSFUL


@dataclass
class MetricRun:
    """A background analysis metric after some measurements."""

    metric: dict[str, Any]
    measurements: Sequence[Phase]

    def phase(self) -> Phase:
        failed = sum(m is Phase.FAILED for m in self.measurements)
        inconclusive = sum(m is Phase.INCONCLUSIVE for m in self.measurements)
        consecutive_errors = 0
        for measurement in self.measurements:
            consecutive_errors = consecutive_errors + 1 if measurement is Phase.ERROR else 0
        phase = Phase.RUNNING
        if failed > int(self.metric.get("failureLimit", 0)):
            phase = Phase.FAILED
        if inconclusive > int(self.metric.get("inconclusiveLimit", 0)):
            phase = Phase.INCONCLUSIVE
        limit = int(self.metric.get("consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT))
        if consecutive_errors > limit:
            phase = Phase.ERROR
        count = self.metric.get("count")
        if phase is Phase.RUNNING and count is not None and len(self.measurements) >= int(count):
            return Phase.SUCCESSFUL
        return phase
