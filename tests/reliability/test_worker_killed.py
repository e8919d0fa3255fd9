"""The worker SIGKILLed mid-job, again and again (issue 15, item 4): every recording still ends
``ready``, no chunk is written twice, no object is left without its row nor a row without its
object, and no killed attempt's working files stay behind.

The worker is ``record worker`` in a process of its own (the worker's login role), killed as an
OOM kill or a lost node kills it and started again as Kubernetes restarts the container; its
jobs are found by the stalled-job sweep once their heartbeat is ``JOB_STALLED_SECONDS`` old. The
model server is the real one on a real port; the recordings are speech, so they make chunks.
The full size (20 recordings, 10 kills) is ``bench/faults.py --scenario worker-kill``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bench.faultprocs import (
    WorkerProcess,
    chunk_count,
    kill_while_running,
    spoken_wav,
    wait_all_done,
)
from tests.app.conftest import Tenant
from tests.app.recordings.test_upload import upload
from tests.conftest import free_port
from tests.reliability.conftest import model_server

pytestmark = pytest.mark.slow

RECORDINGS = 4
KILLS = 3
SENTENCES = (
    "The marketing team will present the new budget on Monday morning.",
    "Please remember to water the garden plants before breakfast every day.",
    "Our quarterly planning offsite moves to the second week of March.",
    "The hiring committee reviews the final candidates on Thursday afternoon.",
    "We launch the mobile application once the security review is complete.",
)


async def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(
    app, client, settings, org_a: Tenant, model_app: Any, tmp_path: Path
):
    if not shutil.which("espeak-ng"):
        pytest.fail("espeak-ng is needed: apt-get install espeak-ng (.ci/run does)")
    ids = []
    for n in range(RECORDINGS):
        text = " ".join(SENTENCES[(n + k) % len(SENTENCES)] for k in range(2))
        wav = spoken_wav(text, tmp_path / f"r{n}.wav")
        response = await upload(client, org_a, wav, f"r{n}.wav")
        assert response.status_code == 202, response.text
        ids.append(response.json()["recording"]["id"])

    port = free_port()
    worker_settings = settings.model_copy(update={"openai_base_url": f"http://127.0.0.1:{port}/v1"})
    proc = WorkerProcess(
        worker_settings,
        tmp_path / "worker-tmp",
        tmp_path / "worker.log",
        # The shortest heartbeat horizon the settings allow: a killed job is retried ~10 s on.
        JOB_STALLED_SECONDS="10",
        JOB_RETRY_BASE_SECONDS="1",
        WORKER_CONCURRENCY="2",
    )
    started = time.monotonic()
    async with model_server(model_app, port):
        proc.start()
        try:
            interrupted = await kill_while_running(settings.database_url, proc, KILLS)
            killed = time.monotonic() - started
            # ~40 s on a quiet machine; the room is for a loaded one, where a worker's event
            # loop can be starved past the 10 s horizon and a live job is retried as stalled
            # (measured once on 2 cores at load 12: a recording ready only after 2 minutes).
            result = await wait_all_done(
                settings.database_url, settings.state_dir / "objects", ids, 180
            )
            elapsed = time.monotonic() - started
        finally:
            proc.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")[-3000:]
    chunks = chunk_count(settings.database_url, ids)
    print(
        f"{RECORDINGS} recordings, {KILLS} kills ({interrupted} running jobs interrupted) "
        f"within {killed:.1f}s: {sorted(result.statuses.values())} after {elapsed:.1f}s, "
        f"attempts {sorted(result.attempts.values())}, {chunks} chunks"
    )
    assert set(result.statuses.values()) == {"ready"}, (result, log)
    assert max(result.attempts.values()) >= 1  # a killed attempt was retried
    assert chunks >= RECORDINGS
    assert result.duplicate_chunks == []
    assert result.objects_without_row == []
    assert result.rows_without_object == []
    # The killed attempts' downloads and decoded audio: in a pod's /tmp (an emptyDir that
    # outlives a container restart) they would add up to the pod's eviction.
    assert proc.leftovers() == []
