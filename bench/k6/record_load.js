// Record API load test: mixed reads and writes by many users of several orgs.
//
// Run by `python -m bench.load`, which creates the orgs, users and keys first and passes them
// in a JSON file (DATA); see bench/load.py for the layout. By hand:
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e DATA=/tmp/identities.json \
//          -e VUS=50 -e DURATION=60s bench/k6/record_load.js
//
// Rate limits are honoured, not dodged: every VU acts as one identity (an API key or a user's
// session) and paces itself by the X-RateLimit-* headers of the `api` limiter (100/60 per
// user; an API key counts against the user who made it). A 429 that still happens is counted
// in `ratelimited` ("expected") and stays out of `unexpected_errors`, whose rate is a
// threshold. Latency thresholds look at expected responses only (2xx/3xx).

import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const DATA = JSON.parse(open(__ENV.DATA));
const BASE = (__ENV.BASE_URL || DATA.base_url).replace(/\/$/, '');
const THINK_MIN = parseFloat(__ENV.THINK_MIN || '0.5');
const THINK_MAX = parseFloat(__ENV.THINK_MAX || '1.0');
const P95_MS = parseFloat(__ENV.P95_MS || '500');
const MAX_ERROR_RATE = parseFloat(__ENV.MAX_ERROR_RATE || '0.01');
const WAV = DATA.wav_path ? open(DATA.wav_path, 'b') : null;

// Endpoint groups: the `ep` tag of every request, one row each in the printed table.
export const ENDPOINTS = [
  'me',
  'org.get',
  'members.list',
  'recordings.list',
  'recordings.page',
  'recordings.get',
  'recordings.transcript',
  'recordings.document',
  'recordings.patch',
  'jobs.get',
  'keys.create',
  'keys.revoke',
  'recordings.upload',
  'search',
  'chat.stream',
  'share.create',
  'share.open',
];

const unexpectedErrors = new Rate('unexpected_errors');
const ratelimited = new Counter('ratelimited');

function thresholds() {
  const t = {
    'http_req_duration{expected_response:true}': [`p(95)<${P95_MS}`],
    unexpected_errors: [`rate<${MAX_ERROR_RATE}`],
  };
  // Always-true thresholds on each group's submetrics: they are how per-tag numbers get into
  // the summary export; they never fail a run.
  for (const ep of ENDPOINTS) {
    t[`http_req_duration{ep:${ep},expected_response:true}`] = ['max>=0'];
    t[`http_reqs{ep:${ep}}`] = ['count>=0'];
    t[`ratelimited{ep:${ep}}`] = ['count>=0'];
    t[`unexpected_errors{ep:${ep}}`] = ['rate>=0'];
  }
  return t;
}

export const options = {
  // VUS and DURATION from bench/load.py: one constant-vus scenario whose stop does not wait
  // for VUs sleeping out a spent rate-limit window (k6's default grace is 30 s).
  scenarios: __ENV.VUS
    ? {
        load: {
          executor: 'constant-vus',
          vus: parseInt(__ENV.VUS, 10),
          duration: __ENV.DURATION || '60s',
          gracefulStop: '3s',
        },
      }
    : undefined,
  thresholds: thresholds(),
  summaryTrendStats: ['min', 'med', 'avg', 'p(95)', 'p(99)', 'max', 'count'],
  // Response bodies are parsed only where the script needs them.
  discardResponseBodies: false,
  insecureSkipTLSVerify: false,
};

// --- per-VU state ---------------------------------------------------------------------------

const ident = DATA.identities[(__VU - 1) % DATA.identities.length] || DATA.identities[0];
const org = DATA.orgs[ident.org_id];
// Recordings this VU has seen (id -> {created_by, status}); seeded from setup, grown by lists.
const known = {};
for (const r of org ? org.recordings : []) known[r.id] = { created_by: r.created_by, status: r.status };
const jobs = org ? org.jobs.slice() : [];
let budget = { remaining: null, resetAt: 0 };
let uploaded = false;

function think() {
  sleep(THINK_MIN + Math.random() * (THINK_MAX - THINK_MIN));
}

function headers(json) {
  const h = { Authorization: `Bearer ${ident.token}` };
  if (ident.kind === 'session') h['X-Record-Org'] = ident.org_id;
  if (json) h['Content-Type'] = 'application/json';
  return h;
}

// Wait while this identity's `api` window is (nearly) spent. `reserve` leaves room for the
// other VUs that share the identity and may have a request in flight.
function pace() {
  if (budget.remaining === null) return;
  const reserve = ident.sharers || 1;
  const now = Date.now();
  if (budget.remaining < reserve && now < budget.resetAt) {
    sleep((budget.resetAt - now) / 1000);
    budget.remaining = null;
  }
}

function observe(res, ep) {
  const status = res.status;
  if (status === 429) {
    ratelimited.add(1, { ep });
    unexpectedErrors.add(0, { ep });
    if (ep !== 'recordings.upload') {
      const retry = parseFloat(res.headers['Retry-After'] || '1');
      budget = { remaining: 0, resetAt: Date.now() + retry * 1000 };
    }
    return false;
  }
  const ok = status >= 200 && status < 300;
  unexpectedErrors.add(ok ? 0 : 1, { ep });
  // Upload responses carry the (much tighter) per-org upload window: not this VU's budget.
  if (ep !== 'recordings.upload') {
    const remaining = res.headers['X-Ratelimit-Remaining'];
    const reset = res.headers['X-Ratelimit-Reset'];
    if (remaining !== undefined && reset !== undefined) {
      budget = {
        remaining: parseInt(remaining, 10),
        resetAt: Date.now() + parseFloat(reset) * 1000,
      };
    }
  }
  return ok;
}

function call(method, path, ep, name, body, params) {
  pace();
  const p = Object.assign({ headers: headers(body !== null && typeof body === 'string') }, params || {});
  p.tags = { ep, name };
  const res = http.request(method, `${BASE}${path}`, body, p);
  const ok = observe(res, ep);
  think();
  return ok ? res : null;
}

function json(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

function pick(list) {
  return list.length ? list[Math.floor(Math.random() * list.length)] : null;
}

function remember(items) {
  for (const r of items || []) known[r.id] = { created_by: r.created_by, status: r.status };
}

// --- actions ----------------------------------------------------------------------------------

function me() {
  call('GET', '/api/me', 'me', 'GET /api/me', null);
}

function getOrg() {
  call('GET', `/api/orgs/${ident.org_id}`, 'org.get', 'GET /api/orgs/{id}', null);
}

function members() {
  call('GET', `/api/orgs/${ident.org_id}/members`, 'members.list', 'GET /api/orgs/{id}/members', null);
}

function listRecordings() {
  // Small pages so the cursor is followed: a client scrolling through its org's recordings.
  const statusFilter = Math.random() < 0.25 ? '&status=ready' : '';
  let res = call('GET', `/api/recordings?limit=2${statusFilter}`, 'recordings.list', 'GET /api/recordings', null);
  for (let page = 0; res && page < 3; page++) {
    const body = json(res);
    if (!body) return;
    remember(body.items);
    if (!body.next_cursor) return;
    const cursor = encodeURIComponent(body.next_cursor);
    res = call(
      'GET',
      `/api/recordings?limit=2${statusFilter}&cursor=${cursor}`,
      'recordings.page',
      'GET /api/recordings?cursor',
      null,
    );
  }
}

function getRecording() {
  const id = pick(Object.keys(known));
  if (!id) return listRecordings();
  const res = call('GET', `/api/recordings/${id}`, 'recordings.get', 'GET /api/recordings/{id}', null);
  const body = res && json(res);
  if (body) known[id] = { created_by: body.created_by, status: body.status };
}

function readResult() {
  const ready = Object.keys(known).filter((id) => known[id].status === 'ready');
  const id = pick(ready);
  if (!id) return getRecording();
  if (Math.random() < 0.5) {
    call('GET', `/api/recordings/${id}/transcript`, 'recordings.transcript', 'GET /api/recordings/{id}/transcript', null);
  } else {
    call('GET', `/api/recordings/${id}/document`, 'recordings.document', 'GET /api/recordings/{id}/document', null);
  }
}

function renameRecording() {
  const mine = Object.keys(known).filter(
    (id) => ident.edit === 'any' || (ident.edit === 'own' && known[id].created_by === ident.user_id),
  );
  const id = pick(mine);
  if (!id) return getRecording();
  const title = `bench ${ident.name} ${__VU}.${__ITER}`;
  call('PATCH', `/api/recordings/${id}`, 'recordings.patch', 'PATCH /api/recordings/{id}', JSON.stringify({ title }));
}

function rotateKey() {
  if (!ident.manage_keys) return me();
  const res = call(
    'POST',
    `/api/orgs/${ident.org_id}/api-keys`,
    'keys.create',
    'POST /api/orgs/{id}/api-keys',
    JSON.stringify({ name: `bench-${__VU}-${__ITER}`, role: 'reader' }),
  );
  const body = res && json(res);
  if (!body || !body.id) return;
  call('DELETE', `/api/orgs/${ident.org_id}/api-keys/${body.id}`, 'keys.revoke', 'DELETE /api/orgs/{id}/api-keys/{key_id}', null);
}

function getJob() {
  const id = pick(jobs);
  if (id === null) return me();
  call('GET', `/api/jobs/${id}`, 'jobs.get', 'GET /api/jobs/{id}', null);
}

// What people ask of their meetings; the seeded recordings are espeak-ng speech about these.
const QUERIES = ['budget review', 'who sends the report', 'hiring engineers', 'launch date', 'next steps'];
const MODES = ['hybrid', 'hybrid', 'vector', 'keyword'];
const QUESTIONS = ['What did we decide about the budget?', 'Who sends the roadmap?', 'What do customers use most?'];

function search() {
  const body = { query: pick(QUERIES), mode: pick(MODES), limit: 10 };
  call('POST', '/api/search', 'search', 'POST /api/search', JSON.stringify(body));
}

// A question about the org's recordings: the whole answer streamed (server-sent events). A
// stream that ends without `done` (an `error` event) is an unexpected error.
function chatStream() {
  const body = { message: pick(QUESTIONS) };
  const res = call('POST', '/api/chat/stream', 'chat.stream', 'POST /api/chat/stream', JSON.stringify(body), {
    timeout: '30s',
  });
  if (res && !String(res.body).includes('event: done')) unexpectedErrors.add(1, { ep: 'chat.stream' });
}

// Owners and admins share a ready recording, then open the link as anyone would.
function shareAndOpen() {
  if (ident.edit !== 'any') return search();
  const id = pick(Object.keys(known).filter((r) => known[r].status === 'ready'));
  if (!id) return getRecording();
  const res = call(
    'POST',
    '/api/share',
    'share.create',
    'POST /api/share',
    JSON.stringify({ resource_type: 'recording', resource_id: id, expires_in: 3600 }),
  );
  const out = res && json(res);
  if (!out || !out.share_id) return;
  const page = http.get(`${BASE}/s/${out.share_id}`, { tags: { ep: 'share.open', name: 'GET /s/{share_id}' } });
  observeAnonymous(page, 'share.open');
}

// Public pages count against the per-IP `share_page` limiter, not this identity's budget.
function observeAnonymous(res, ep) {
  if (res.status === 429) {
    ratelimited.add(1, { ep });
    unexpectedErrors.add(0, { ep });
    return;
  }
  unexpectedErrors.add(res.status >= 200 && res.status < 300 ? 0 : 1, { ep });
}

function upload() {
  uploaded = true;
  const title = `bench upload ${ident.name} ${__VU}`;
  const body = { title, file: http.file(WAV, 'bench.wav', 'audio/wav') };
  const res = call('POST', '/api/recordings', 'recordings.upload', 'POST /api/recordings', body, {
    timeout: '60s',
  });
  const out = res && json(res);
  if (out && out.recording) {
    remember([out.recording]);
    if (out.job_id !== undefined && out.job_id !== null) jobs.push(out.job_id);
  }
}

// Weights: reads dominate, as in a product where people browse far more than they write.
const MIX = [
  [24, listRecordings],
  [18, getRecording],
  [12, readResult],
  [10, me],
  [8, members],
  [5, getOrg],
  [10, renameRecording],
  [6, rotateKey],
  [7, getJob],
  [8, search],
  [3, chatStream],
  [2, shareAndOpen],
];
const TOTAL = MIX.reduce((sum, [w]) => sum + w, 0);

export default function () {
  // A few designated VUs upload one recording each, a little into the run: the upload limit
  // is 5 per hour per org, and setup has used part of it.
  if (ident.uploader && !uploaded && WAV && __ITER >= 2 && __VU <= DATA.identities.length) {
    return upload();
  }
  let r = Math.random() * TOTAL;
  for (const [weight, action] of MIX) {
    r -= weight;
    if (r < 0) return action();
  }
  return me();
}
