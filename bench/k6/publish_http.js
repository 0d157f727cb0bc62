// The original service's load scenario over HTTP/JSON: EVENTS events with DUP_RATE
// duplicates from VUS virtual users, BATCH events per POST /publish (1: single events, the
// original; 50: arrays). Every status is checked; `python -m bench.k6run` checks /stats after.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e EVENTS=20000 -e VUS=20 -e BATCH=1 publish_http.js
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const EVENTS = parseInt(__ENV.EVENTS || '20000', 10);
const DUP_RATE = parseFloat(__ENV.DUP_RATE || '0.3');
const VUS = parseInt(__ENV.VUS || '20', 10);
const BATCH = parseInt(__ENV.BATCH || '1', 10);
const TOPIC = __ENV.TOPIC || `k6-http-${Date.now()}`;
const DISTINCT = Math.round(EVENTS * (1 - DUP_RATE));
const P95_MS = parseFloat(__ENV.P95_MS || '1000');

const ITERATIONS = Math.ceil(EVENTS / BATCH);

export const options = {
  scenarios: {
    publish: {
      executor: 'shared-iterations',
      vus: Math.min(VUS, ITERATIONS),
      iterations: ITERATIONS,
      maxDuration: __ENV.MAX_DURATION || '10m',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(95)<${P95_MS}`],
    checks: ['rate>0.99'],
  },
};

const params = {
  headers: Object.assign(
    { 'Content-Type': 'application/json' },
    __ENV.TOKEN ? { Authorization: `Bearer ${__ENV.TOKEN}` } : {},
  ),
  tags: { name: 'POST /publish' },
};

// Event n of the run: the ids after the first DISTINCT repeat earlier ones, same content.
function event(n) {
  const id = n % DISTINCT;
  return {
    topic: TOPIC,
    event_id: `e-${id}`,
    timestamp: new Date(Date.UTC(2024, 4, 1, 12, 0, 0) + id).toISOString(),
    source: 'k6',
    payload: { n: id, note: 'load test' },
  };
}

export default function () {
  const first = exec.scenario.iterationInTest * BATCH;
  const count = Math.min(BATCH, EVENTS - first);
  const events = [];
  for (let i = 0; i < count; i++) events.push(event(first + i));
  const body = JSON.stringify(BATCH === 1 ? events[0] : events);
  const res = http.post(`${BASE_URL}/publish`, body, params);
  const answer = res.status === 200 ? res.json() : null;
  check(res, {
    'status is 200': (r) => r.status === 200,
    'one result per event': () => answer !== null && answer.results.length === count,
    'each event ACCEPTED or DUPLICATE': () =>
      answer !== null &&
      answer.results.every((r) => r.status === 'ACCEPTED' || r.status === 'DUPLICATE'),
    'received counts the events taken': () => answer !== null && answer.received === count,
  });
}
