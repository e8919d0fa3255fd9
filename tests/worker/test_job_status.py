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
