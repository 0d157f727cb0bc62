// The original service's load scenario over HTTP/JSON: EVENTS events with DUP_RATE
// duplicates from VUS virtual users, BATCH events per POST /publish (1: single events, the
// original; 50: arrays; FRESH=1: each event stamped when sent). Every status is checked;
// `python -m bench.k6run` checks /stats after.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8000 -e EVENTS=20000 -e VUS=20 -e BATCH=1 publish_http.js
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { EVENTS, FRESH, event, sharedIterations } from './scenario.js';

const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:8000';
const BATCH = parseInt(__ENV.BATCH || '1', 10);
const TOPIC = __ENV.TOPIC || `k6-http-${Date.now()}`;
const P95_MS = parseFloat(__ENV.P95_MS || '1000');

export const options = sharedIterations(Math.ceil(EVENTS / BATCH), {
  http_req_failed: ['rate<0.01'],
  http_req_duration: [`p(95)<${P95_MS}`],
  checks: ['rate>0.99'],
});

const params = {
  headers: Object.assign(
    { 'Content-Type': 'application/json' },
    __ENV.TOKEN ? { Authorization: `Bearer ${__ENV.TOKEN}` } : {},
  ),
  tags: { name: 'POST /publish' },
};

export default function () {
  const first = exec.scenario.iterationInTest * BATCH;
  const count = Math.min(BATCH, EVENTS - first);
  const events = [];
  for (let i = 0; i < count; i++) events.push(event(first + i, TOPIC));
  const body = JSON.stringify(BATCH === 1 ? events[0] : events);
  const res = http.post(`${BASE_URL}/publish`, body, params);
  const answer = res.status === 200 ? res.json() : null;
  check(res, {
    'status is 200': (r) => r.status === 200,
    'one result per event': () => answer !== null && answer.results.length === count,
    'each event ACCEPTED or DUPLICATE (or CONFLICT when FRESH)': () =>
      answer !== null &&
      answer.results.every(
        (r) =>
          r.status === 'ACCEPTED' || r.status === 'DUPLICATE' || (FRESH && r.status === 'CONFLICT'),
      ),
    'received = accepted + duplicates + rejected': () =>
      answer !== null && answer.received === answer.accepted + answer.duplicates + answer.rejected,
    'received counts the events taken': () => answer !== null && answer.received === count,
  });
}
