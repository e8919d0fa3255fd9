"""``record smoke --url URL``: after a deploy, does the public URL work end to end?

A client like any other (HTTP only, nothing of the server imported): it checks readiness
(``/api/health``: the ingress routes no ``/readyz``), signs up a throwaway account and org (or
uses ``--api-key``), uploads a few seconds of generated speech and waits for it to be ready,
finds it by search, reads a chat answer to its ``done`` event, opens a share link with no
credentials, and checks the security headers on every response it saw and that ``/metrics``
is not public. Then it deletes what it made.

The speech comes from espeak-ng: a tone would transcribe to nothing, and nothing could be
searched, so without espeak-ng the upload check fails rather than uploading one.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import typer

if TYPE_CHECKING:
    import httpx

# What app/kit/middleware.py's SecurityHeadersMiddleware sets on every response (name: the
# value required, or None for any). Missing through the public URL means a proxy strips it.
REQUIRED_HEADERS: dict[str, str | None] = {
    "Content-Security-Policy": None,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": None,
    "X-Frame-Options": None,
    "Permissions-Policy": None,
    "Cross-Origin-Opener-Policy": None,
}
HSTS = "Strict-Transport-Security"
# Readiness through the public URL (app/health/routes.py): the ingress does not route /readyz.
HEALTH_PATH = "/api/health"  # the app sends it in production; required over https
# Words tiny.en hears back from espeak-ng (measured: 54 three-word sentences, one miss, after
# dropping banana, pillow, piano, violin, silver, ocean and candle, which it mishears).
SPOKEN_WORDS = (
    "orange",
    "planet",
    "ticket",
    "wallet",
    "tomato",
    "basket",
    "forest",
    "kitten",
    "coffee",
    "pencil",
    "thunder",
    "rocket",
    "tiger",
    "rabbit",
    "river",
    "marble",
    "yellow",
    "guitar",
    "jacket",
    "lemon",
    "camera",
    "garden",
    "window",
    "dolphin",
)
SMOKE_KEY_ROLE = "admin"  # deletes the recording and the share it made, whoever owns them
RETRY_AFTER_CAP = 30.0
GATES = {"readiness", "signup", "api key"}
INDEPENDENT = {"security headers", "metrics not public"}

Status = Literal["ok", "fail", "skipped"]


class CheckFailed(Exception):
    """A check's failure, worded for the person reading the report: what went wrong, and
    where to look next."""


class Skipped(Exception):
    """A check that cannot run because one before it failed."""


@dataclass
class CheckResult:
    name: str
    status: Status
    seconds: float
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SmokeReport:
    url: str
    checks: list[CheckResult]
    created: dict[str, str]  # what the run made (ids), all deleted unless cleanup failed
    left_behind: list[str]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "checks": [{**asdict(check), "ok": check.ok} for check in self.checks],
            "created": self.created,
            "left_behind": self.left_behind,
        }


@dataclass(frozen=True)
class SmokeOptions:
    url: str
    api_key: str | None = None
    email_domain: str = "example.com"
    ready_timeout: float = 180.0
    request_timeout: float = 30.0
    poll_interval: float = 1.0


@dataclass
class Created:
    """What this run made on the server, so cleanup knows what to delete."""

    email: str | None = None
    session_token: str | None = None
    org_id: str | None = None
    key_id: str | None = None
    recording_id: str | None = None
    job_id: str | None = None
    ready: bool = False
    transcript: str = ""
    conversation_id: str | None = None
    share_id: str | None = None
    share_url: str | None = None
    deleted: list[str] = field(default_factory=list)


def speak(words: list[str], path: Path) -> None:
    """A few seconds of speech naming ``words``, as a WAV file."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise CheckFailed(
            "espeak-ng is not on PATH: the check speaks its test recording with it (apt-get "
            "install espeak-ng). A tone would transcribe to nothing, so search could not find it."
        )
    sentence = f"Smoke check: {', '.join(words)}."
    try:
        # A fixed program found on PATH; the sentence is built from our own word list.
        subprocess.run(  # noqa: S603
            [espeak, "-s", "150", "-w", str(path), sentence],
            check=True,
            timeout=60,
            capture_output=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        raise CheckFailed(f"espeak-ng could not speak: {exc} {stderr.decode()[:200]}") from exc


def problem_detail(response: httpx.Response) -> str:
    """HTTP status, the problem's detail and the request id to find in the server's logs."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        text = str(body.get("detail") or body.get("title") or response.reason_phrase)
    else:
        text = response.text[:200].strip() or response.reason_phrase
    request_id = response.headers.get("x-request-id")
    return f"HTTP {response.status_code}: {text}" + (
        f" (request_id {request_id})" if request_id else ""
    )


def retry_after(response: httpx.Response) -> float:
    """Seconds a 429 asks to wait (a number; an HTTP date counts as one second)."""
    try:
        return min(max(float(response.headers.get("retry-after") or 1), 0.1), RETRY_AFTER_CAP)
    except ValueError:
        return 1.0


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Server-sent events as (name, data) from a stream's lines."""
    name, data = "", ""
    for line in lines:
        if not line:
            if name:
                yield name, json.loads(data or "{}")
            name, data = "", ""
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


class SmokeRun:
    """One run of the checks against ``options.url``; ``transport`` replaces the network in
    tests."""

    def __init__(self, options: SmokeOptions, transport: httpx.BaseTransport | None = None):
        import httpx

        self.options = options
        self.base = options.url.rstrip("/")
        self.made = Created()
        self.words = random.SystemRandom().sample(SPOKEN_WORDS, 3)
        self.auth: dict[str, str] = {}
        # Every response from the app, for the security headers check: (what, headers).
        self.seen: list[tuple[str, httpx.Headers]] = []
        hooks = {"response": [self._saw]}
        timeout = httpx.Timeout(options.request_timeout, connect=10.0)
        self.http = httpx.Client(
            base_url=self.base,
            timeout=timeout,
            transport=transport,
            event_hooks=hooks,
            headers={"User-Agent": "record-smoke"},
        )
        # No credentials and no cookie jar shared with the signed-in client.
        self.anonymous = httpx.Client(
            base_url=self.base,
            timeout=timeout,
            transport=transport,
            event_hooks=hooks,
            headers={"User-Agent": "record-smoke"},
        )

    def _saw(self, response: httpx.Response) -> None:
        # /metrics may be answered by the ingress itself, which owes no app headers.
        path = response.request.url.path
        if path != "/metrics":
            # A share link's id is its credential: not printed, even revoked.
            shown = "/s/…" if path.startswith("/s/") else path
            what = f"{response.request.method} {shown} ({response.status_code})"
            self.seen.append((what, response.headers))

    def close(self) -> None:
        self.http.close()
        self.anonymous.close()

    # --- HTTP ----------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        expect: set[int],
        what: str,
        client: httpx.Client | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request; a 429 is waited out as told, anything outside ``expect`` fails."""
        import httpx

        client = client or self.http
        if kwargs.get("headers") is None:
            # The anonymous client never carries the key, whatever the call forgets to say.
            kwargs["headers"] = self.auth if client is self.http else {}
        deadline = time.monotonic() + self.options.ready_timeout
        while True:
            try:
                response = client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                where = path if path.startswith("http") else f"{self.base}{path}"
                raise CheckFailed(
                    f"{what}: cannot reach {where} ({type(exc).__name__}: {exc}). Is the URL "
                    "right, and are its DNS, load balancer and ingress up?"
                ) from exc
            if response.status_code == 429 and time.monotonic() < deadline:
                time.sleep(retry_after(response))
                continue
            if response.is_redirect and response.status_code not in expect:
                raise CheckFailed(
                    f"{what}: HTTP {response.status_code} to {response.headers.get('location')}: "
                    "run the check against the URL it redirects to."
                )
            if response.status_code not in expect:
                raise CheckFailed(f"{what}: {problem_detail(response)}")
            return response

    # --- the checks, in order ------------------------------------------------------------------

    def check_readiness(self) -> str:
        # /api/health, not /readyz: the ingress routes only the public paths (infra/api.py
        # PUBLIC_PATHS), and /readyz's details are for operators inside the cluster.
        response = self.call("GET", HEALTH_PATH, expect={200, 503}, what=f"GET {HEALTH_PATH}")
        if response.status_code != 200:
            raise CheckFailed(
                f"{HEALTH_PATH} answers {problem_detail(response)}. The API is up but cannot "
                "serve: its /readyz (kubectl port-forward, or the pods' readiness) says which "
                "dependency fails (database, schema at head: `record db upgrade`)."
            )
        try:
            status = str(response.json().get("status", "ready"))
        except (ValueError, AttributeError) as exc:
            raise CheckFailed(
                f"{HEALTH_PATH} answers 200 but not Record's JSON ({response.text[:100]!r}): is "
                "the URL Record's, or does something in front answer for it?"
            ) from exc
        if status == "degraded":
            return "degraded (Valkey unreachable: served without caches, limits fail open)"
        return status

    def check_signup(self) -> str:
        suffix = secrets.token_hex(5)
        email = f"smoke-{suffix}@{self.options.email_domain}"
        password = secrets.token_urlsafe(24)
        body = {"email": email, "password": password, "name": "Record smoke check"}
        response = self.call(
            "POST",
            "/api/auth/signup",
            json={**body, "org_name": f"smoke {suffix}"},
            expect={201, 403},
            what="signup",
        )
        if response.status_code == 403 or response.json().get("org") is None:
            raise CheckFailed(
                f"signup is disabled or by invitation here ({problem_detail(response)}): "
                "run with --api-key and an org key of role contributor or higher."
            )
        signed_up = response.json()
        self.made.email = email
        self.made.session_token = signed_up["session_token"]
        org_id = self.made.org_id = signed_up["org"]["id"]
        key = self.call(
            "POST",
            f"/api/orgs/{org_id}/api-keys",
            json={"name": "record smoke", "role": SMOKE_KEY_ROLE},
            headers=self._session_headers(),
            expect={201},
            what="creating an API key with the new session",
        ).json()
        self.made.key_id = key["id"]
        self.auth = {"Authorization": f"Bearer {key['key']}"}
        me = self.call("GET", "/api/me", expect={200}, what="GET /api/me with the new key")
        if (me.json().get("org") or {}).get("id") != org_id:
            raise CheckFailed(f"the new key acts for another org: {me.json().get('org')}")
        return f"{email}, org {org_id}, key {key['prefix']}… works"

    def check_api_key(self) -> str:
        self.auth = {"Authorization": f"Bearer {self.options.api_key}"}
        response = self.call("GET", "/api/me", expect={200, 401}, what="GET /api/me")
        if response.status_code == 401:
            raise CheckFailed(
                f"the server refused the key ({problem_detail(response)}): is it revoked, or "
                "made on another deployment (each has its own database)?"
            )
        org = response.json().get("org") or {}
        if org.get("role") == "reader":
            raise CheckFailed("the key's role is reader: uploads need contributor or higher.")
        return f"org {org.get('name')!r} ({org.get('id')}), role {org.get('role')}"

    def check_upload(self) -> str:
        with tempfile.TemporaryDirectory(prefix="record-smoke-") as tmp:
            wav = Path(tmp) / "smoke.wav"
            speak(self.words, wav)
            accepted = self.call(
                "POST",
                "/api/recordings",
                files={"file": ("smoke.wav", wav.read_bytes(), "audio/wav")},
                data={"title": f"smoke check {' '.join(self.words)}"},
                expect={202},
                what="POST /api/recordings",
            ).json()
        recording = accepted["recording"]
        self.made.recording_id, self.made.job_id = recording["id"], str(accepted["job_id"])
        started = time.monotonic()
        recording = self._wait_ready(recording["id"])
        self.made.ready = True
        transcript = self.call(
            "GET",
            f"/api/recordings/{recording['id']}/transcript",
            expect={200},
            what="GET the transcript",
        ).json()
        self.made.transcript = str(transcript.get("text", "")).strip()
        return (
            f"ready in {time.monotonic() - started:.1f} s; said {' '.join(self.words)!r}, "
            f"heard {self.made.transcript[:80]!r}"
        )

    def _wait_ready(self, recording_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.options.ready_timeout
        while True:
            recording: dict[str, Any] = self.call(
                "GET", f"/api/recordings/{recording_id}", expect={200}, what="polling the recording"
            ).json()
            if recording["status"] == "ready":
                return recording
            if recording["status"] == "failed":
                raise CheckFailed(
                    f"the recording failed: {recording.get('error')}. See GET /api/jobs/"
                    f"{self.made.job_id} and the worker's logs."
                )
            if time.monotonic() > deadline:
                raise CheckFailed(self._not_ready(recording))
            time.sleep(self.options.poll_interval)

    def _not_ready(self, recording: dict[str, Any]) -> str:
        job = self.call(
            "GET", f"/api/jobs/{self.made.job_id}", expect={200, 404}, what="GET the job"
        ).json()
        state = f"status {recording['status']!r}, job {job.get('status')!r}"
        if job.get("attempts"):
            state += f" after {job['attempts']} attempt(s), last error {job.get('error')!r}"
        if recording["status"] == "uploaded" and job.get("status") == "todo":
            hint = "no worker took the job: is the worker running, on the same database?"
        else:
            hint = "the worker is slow or stuck: look at its logs and at the model service."
        return f"not ready after {self.options.ready_timeout:g} s ({state}); {hint}"

    def check_search(self) -> str:
        self._need(self.made.ready, "the upload did not reach ready")
        query = " ".join(self.words)
        results = self.call(
            "POST",
            "/api/search",
            json={"query": query, "mode": "hybrid", "limit": 10},
            expect={200},
            what="POST /api/search",
        ).json()["results"]
        for rank, hit in enumerate(results, 1):
            if hit["recording_id"] == self.made.recording_id:
                return f"rank {rank} of {len(results)} for {query!r}: {hit['text'][:60]!r}"
        raise CheckFailed(
            f"not among the {len(results)} results for {query!r} (the transcript reads "
            f"{self.made.transcript[:80]!r}): check the embedding model the worker and the API "
            "use (the same OPENAI_BASE_URL and model on both?)."
        )

    def check_chat(self) -> str:
        self._need(self.made.ready, "the upload did not reach ready")
        import httpx

        body: dict[str, Any] = {
            "message": "Which words does the smoke check say?",
            "recording_ids": [self.made.recording_id],
        }
        names: list[str] = []
        tokens = citations = 0
        try:
            with self.http.stream(
                "POST", "/api/chat/stream", json=body, headers=self.auth
            ) as response:
                if response.status_code != 200:
                    response.read()
                    raise CheckFailed(f"POST /api/chat/stream: {problem_detail(response)}")
                for name, data in sse_events(response.iter_lines()):
                    names.append(name)
                    if name == "conversation":
                        self.made.conversation_id = data.get("conversation_id")
                    elif name == "token":
                        tokens += 1
                    elif name == "citations":
                        citations = len(data.get("citations") or [])
                    elif name == "error":
                        raise CheckFailed(f"the stream sent an error: {data}")
                    elif name == "done":
                        return f"done after {tokens} token(s), {citations} citation(s)"
        except httpx.TransportError as exc:
            raise CheckFailed(
                f"the stream broke after events {names} ({type(exc).__name__}: {exc}): a "
                "proxy's read timeout or buffering of text/event-stream?"
            ) from exc
        raise CheckFailed(
            f"the stream ended without a done event (events: {names}): a proxy cutting or "
            "buffering text/event-stream, or the chat model failing (API logs)."
        )

    def check_share(self) -> str:
        self._need(self.made.ready, "the upload did not reach ready")
        share = self.call(
            "POST",
            "/api/share",
            json={"resource_type": "recording", "resource_id": self.made.recording_id},
            expect={201},
            what="POST /api/share",
        ).json()
        self.made.share_id, url = share["share_id"], share["url"]
        self.made.share_url = url
        path = urlsplit(url).path
        note = ""
        if not url.startswith(f"{self.base}/"):
            # The same path here, never the address as given: the server under test must not
            # make this check fetch whatever the machine running it can reach.
            note = f" (its address is not under {self.base}: is PUBLIC_URL set for this deploy?)"
        page = self.call(
            "GET", path, expect={200}, what="opening the link anonymously", client=self.anonymous
        ).json()
        if page.get("resource_type") != "recording" or not page.get("transcript"):
            kind = str(page.get("resource_type"))[:40]
            raise CheckFailed(f"the link opened, but not on the recording's transcript ({kind})")
        return f"opened {path[:12]}… with no credentials{note}"

    def check_security_headers(self) -> str:
        self._need(bool(self.seen), "no response from the app to look at")
        required = dict(REQUIRED_HEADERS)
        if self.base.startswith("https://"):
            required[HSTS] = None
        missing: dict[str, list[str]] = {}
        for what, headers in self.seen:
            for name, value in required.items():
                got = headers.get(name)
                if got is None or (value is not None and got.lower() != value):
                    missing.setdefault(name, []).append(what)
        if missing:
            where = "; ".join(
                f"{name} on {', '.join(whats[:3])}" for name, whats in missing.items()
            )
            raise CheckFailed(
                f"missing or wrong: {where}. The app sets them on every response "
                "(app/kit/middleware.py, HSTS when ENVIRONMENT=production): a proxy, CDN or "
                "ingress in front strips them."
            )
        return f"{len(required)} headers on all {len(self.seen)} responses"

    def check_metrics_hidden(self) -> str:
        response = self.call(
            "GET",
            f"{self.base}/metrics",
            headers={},
            expect=set(range(100, 600)),
            what="GET /metrics",
            client=self.anonymous,
        )
        if response.status_code == 200 and ("# HELP" in response.text or "# TYPE" in response.text):
            raise CheckFailed(
                "the public URL serves Prometheus metrics: route only the app's public paths "
                "in the ingress (Prometheus scrapes /metrics inside the cluster)."
            )
        return f"answered {response.status_code}"

    def _need(self, condition: bool, reason: str) -> None:
        if not condition:
            raise Skipped(reason)

    def _session_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.made.session_token}",
            "X-Record-Org": str(self.made.org_id),
        }

    # --- cleanup -------------------------------------------------------------------------------

    def cleanup(self) -> str:
        """Delete what the run made, each piece tried even when one fails."""
        made, problems = self.made, []
        steps: list[tuple[str, str | None, Callable[[str], None]]] = [
            ("share", made.share_id, self._delete_share),
            ("conversation", made.conversation_id, self._delete_conversation),
            ("recording", made.recording_id, self._delete_recording),
            ("api_key", made.key_id, self._delete_key),
            ("org", made.org_id, self._delete_org),
        ]
        for what, ident, delete in steps:
            if ident is None:
                continue
            try:
                delete(ident)
                made.deleted.append(what)
            except CheckFailed as exc:
                problems.append(f"{what} {ident}: {exc}")
        if made.session_token:
            try:
                self.call(
                    "POST",
                    "/api/auth/logout",
                    # Not naming the org: it is gone by now.
                    headers={"Authorization": f"Bearer {made.session_token}"},
                    expect={204, 401},
                    what="logout",
                )
            except CheckFailed as exc:
                problems.append(str(exc))
        if problems:
            raise CheckFailed("left behind: " + "; ".join(problems))
        names = [what.replace("api_key", "API key") for what in made.deleted]
        deleted = f"deleted {', '.join(names)}" if names else "nothing to delete"
        return deleted + (
            f"; the account {made.email} stays (the API cannot delete an account)"
            if made.email
            else ""
        )

    def _delete_share(self, share_id: str) -> None:
        self.call("DELETE", f"/api/share/{share_id}", expect={204, 404}, what="DELETE the share")
        if self.made.share_url:
            self.call(
                "GET",
                self.made.share_url,
                expect={404, 410},
                what="the revoked link, opened anonymously",
                client=self.anonymous,
            )

    def _delete_conversation(self, conversation_id: str) -> None:
        self.call(
            "DELETE",
            f"/api/conversations/{conversation_id}",
            expect={204, 404},
            what="DELETE the conversation",
        )

    def _delete_recording(self, recording_id: str) -> None:
        path = f"/api/recordings/{recording_id}"
        self.call("DELETE", path, expect={204, 404}, what="DELETE the recording")
        self.call("GET", path, expect={404}, what="the deleted recording")

    def _delete_key(self, key_id: str) -> None:
        self.call(
            "DELETE",
            f"/api/orgs/{self.made.org_id}/api-keys/{key_id}",
            headers=self._session_headers(),
            expect={204, 404},
            what="DELETE the API key",
        )

    def _delete_org(self, org_id: str) -> None:
        self.call(
            "DELETE",
            f"/api/orgs/{org_id}",
            headers=self._session_headers(),
            expect={204},
            what="DELETE the org",
        )

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> SmokeReport:
        auth = ("api key", self.check_api_key) if self.options.api_key else None
        steps: list[tuple[str, Callable[[], str]]] = [
            ("readiness", self.check_readiness),
            auth or ("signup", self.check_signup),
            ("upload to ready", self.check_upload),
            ("search", self.check_search),
            ("chat stream", self.check_chat),
            ("share link", self.check_share),
            ("security headers", self.check_security_headers),
            ("metrics not public", self.check_metrics_hidden),
        ]
        results: list[CheckResult] = []
        try:
            for name, step in steps:
                # Nothing works without a ready API and a way in; headers and /metrics still
                # say something about the URL.
                blocker = next((r.name for r in results if not r.ok and r.name in GATES), None)
                if blocker and name not in INDEPENDENT:
                    results.append(CheckResult(name, "skipped", 0.0, f"{blocker} failed"))
                    continue
                results.append(timed(name, step))
        finally:
            results.append(timed("cleanup", self.cleanup))
            self.close()
        made = self.made
        ids = {
            "account": made.email,
            "org": made.org_id,
            "api_key": made.key_id,
            "recording": made.recording_id,
            "conversation": made.conversation_id,
            "share": made.share_id,
        }
        left = [
            f"{kind} {ident}" for kind, ident in ids.items() if ident and kind not in made.deleted
        ]
        return SmokeReport(self.base, results, {k: v for k, v in ids.items() if v}, left)


def timed(name: str, step: Callable[[], str]) -> CheckResult:
    import httpx

    started = time.monotonic()
    status: Status = "ok"
    try:
        detail = step()
    except CheckFailed as exc:
        status, detail = "fail", str(exc)
    except Skipped as exc:
        status, detail = "skipped", str(exc)
    except (KeyError, TypeError, ValueError) as exc:
        # An answer of the wrong shape: an API of another version, or not Record at all.
        status, detail = "fail", f"unexpected answer ({type(exc).__name__}: {exc}): is it Record?"
    except httpx.HTTPError as exc:
        status, detail = "fail", f"HTTP error ({type(exc).__name__}: {exc})"
    return CheckResult(name, status, round(time.monotonic() - started, 2), detail)


def print_report(report: SmokeReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 200  # a workflow's log: whole lines, not a table squeezed to 80 columns
    console.print(f"record smoke {report.url}")
    table = Table(show_edge=False)
    table.add_column("Check", no_wrap=True)
    table.add_column("Result", no_wrap=True)
    table.add_column("Time", justify="right", no_wrap=True)
    table.add_column("Detail", overflow="fold")
    marks = {"ok": "[green]✓ ok[/]", "fail": "[red]✗ fail[/]", "skipped": "[yellow]- skipped[/]"}
    for check in report.checks:
        table.add_row(check.name, marks[check.status], f"{check.seconds:.1f} s", check.detail)
    console.print(table)
    failed = [check.name for check in report.checks if not check.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(report.checks)} checks did not pass[/]")
    else:
        console.print(f"[green]all {len(report.checks)} checks passed[/]")


def smoke(
    *,
    url: Annotated[str, typer.Option("--url", help="The deployment's public URL.")],
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="RECORD_SMOKE_API_KEY",
            help="Use this org API key (contributor or higher) instead of signing up.",
        ),
    ] = None,
    email_domain: Annotated[
        str, typer.Option(help="Domain of the throwaway account's address (smoke-<random>@…).")
    ] = "example.com",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON (for workflows).")
    ] = False,
    ready_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds the upload may take to reach ready.")
    ] = 180.0,
    request_timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 30.0,
    poll_interval: Annotated[float, typer.Option(hidden=True)] = 1.0,
) -> None:
    """Check a deployment end to end through its public URL; exit 1 on a failure.

    Readiness; signup of a throwaway account and org (or --api-key); an upload
    of a few seconds of speech (made with espeak-ng, which must be installed)
    that reaches ready; a search that finds it; a chat stream read to done; a
    share link opened with no credentials; security headers on every response;
    /metrics not public.

    Then it deletes the share, conversation, recording, API key and org it
    made. The API cannot delete an account: a signup leaves its account
    (smoke-...@EMAIL_DOMAIN, with no org) behind; use --api-key to avoid that.
    """
    options = SmokeOptions(
        url=url,
        api_key=api_key,
        email_domain=email_domain,
        ready_timeout=ready_timeout,
        request_timeout=request_timeout,
        poll_interval=poll_interval,
    )
    report = SmokeRun(options).run()
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=2))
    else:
        print_report(report)
    if not report.ok:
        raise typer.Exit(1)
