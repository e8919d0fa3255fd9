"""How a pipeline job ends is what ``record_jobs_total`` counts: a job cancelled by a worker
shutting down is handed back, not counted as succeeded."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from app.jobs.queue import PIPELINE_TASK
from worker import jobs


def count(status: str) -> float:
    labels = {"type": "process_recording", "status": status}
    return REGISTRY.get_sample_value("record_jobs_total", labels) or 0.0


@pytest.mark.parametrize(
    ("outcome", "status"),
    [(None, "succeeded"), (asyncio.CancelledError(), "cancelled")],
)
async def test_the_job_metric_says_how_the_job_ended(
    settings, monkeypatch: pytest.MonkeyPatch, outcome: BaseException | None, status: str
) -> None:
    async def process_recording(*_: object) -> None:
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(jobs, "process_recording", process_recording)
    monkeypatch.setattr(jobs.STATE, "deps", SimpleNamespace())
    task = jobs.build_app(settings).tasks[PIPELINE_TASK]
    context = SimpleNamespace(job=SimpleNamespace(attempts=0))
    before = {s: count(s) for s in ("succeeded", "cancelled")}
    if outcome is None:
        await task.func(context, str(uuid.uuid4()), str(uuid.uuid4()))
    else:
        with pytest.raises(type(outcome)):
            await task.func(context, str(uuid.uuid4()), str(uuid.uuid4()))
    after = {s: count(s) for s in ("succeeded", "cancelled")}
    assert {s: after[s] - before[s] for s in after} == {
        s: 1.0 if s == status else 0.0 for s in after
    }


def test_a_cancelled_job_goes_back_even_on_its_last_attempt() -> None:
    from worker.pipeline import PermanentError

    retry = jobs.PipelineRetry(max_attempts=3, base_seconds=2)
    last = SimpleNamespace(attempts=2)
    decision = retry.get_retry_decision(exception=asyncio.CancelledError(), job=last)
    assert decision is not None
    assert retry.get_retry_decision(exception=RuntimeError("flaky"), job=last) is None
    first = SimpleNamespace(attempts=0)
    assert retry.get_retry_decision(exception=PermanentError("bad file"), job=first) is None
    assert retry.get_retry_decision(exception=RuntimeError("flaky"), job=first) is not None
