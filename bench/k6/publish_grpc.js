// The same scenario over gRPC: the bidirectional Publish stream, through k6/net/grpc and our
// .proto. Each iteration opens a stream, sends REQUESTS requests of BATCH events, half-closes
// and checks every status of every response.
//
//   k6 run -e TARGET=127.0.0.1:50051 -e EVENTS=20000 -e VUS=20 publish_grpc.js
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { check } from 'k6';

const TARGET = __ENV.TARGET || '127.0.0.1:50051';
const EVENTS = parseInt(__ENV.EVENTS || '20000', 10);
const DUP_RATE = parseFloat(__ENV.DUP_RATE || '0.3');
const VUS = parseInt(__ENV.VUS || '20', 10);
const BATCH = parseInt(__ENV.BATCH || '100', 10);
const REQUESTS = parseInt(__ENV.REQUESTS || '10', 10);
const TOPIC = __ENV.TOPIC || `k6-grpc-${Date.now()}`;
const DISTINCT = Math.round(EVENTS * (1 - DUP_RATE));
const PER_STREAM = BATCH * REQUESTS;

const ITERATIONS = Math.ceil(EVENTS / PER_STREAM);

export const options = {
  scenarios: {
    publish: {
      executor: 'shared-iterations',
      vus: Math.min(VUS, ITERATIONS),
      iterations: ITERATIONS,
      maxDuration: __ENV.MAX_DURATION || '10m',
    },
  },
  thresholds: { checks: ['rate>0.99'] },
};

const client = new grpc.Client();
client.load([__ENV.PROTO_ROOT || '../../protos'], 'aggregator/v1/aggregator.proto');

function event(n) {
  const id = n % DISTINCT;
  return {
    topic: TOPIC,
    eventId: `e-${id}`,
    timestamp: new Date(Date.UTC(2024, 4, 1, 12, 0, 0) + id).toISOString(),
    source: 'k6',
    payload: JSON.stringify({ n: id, note: 'load test' }),
  };
}

export default function () {
  if (exec.vu.iterationInScenario === 0) {
    client.connect(TARGET, { plaintext: true });
  }
  const first = exec.scenario.iterationInTest * PER_STREAM;
  const total = Math.max(0, Math.min(PER_STREAM, EVENTS - first));
  const metadata = __ENV.TOKEN ? { authorization: `Bearer ${__ENV.TOKEN}` } : {};
  const stream = new grpc.Stream(client, 'aggregator.v1.AggregatorService/Publish', { metadata });
  const answers = [];
  let failure = null;
  stream.on('data', (response) => answers.push(response));
  stream.on('error', (err) => {
    failure = err;
  });
  stream.on('end', () => {
    const statuses = answers.flatMap((a) => a.statuses);
    check(null, {
      'stream ended without error': () => failure === null,
      'one response per request, in order': () =>
        answers.map((a) => Number(a.sequence || 0)).join() ===
        [...Array(answers.length).keys()].join(),
      'one status per event': () => statuses.length === total,
      'each event ACCEPTED or DUPLICATE': () =>
        statuses.every((s) => s === 'EVENT_STATUS_ACCEPTED' || s === 'EVENT_STATUS_DUPLICATE'),
    });
  });
  for (let r = 0, sent = 0; sent < total; r++, sent += BATCH) {
    const events = [];
    for (let i = sent; i < Math.min(sent + BATCH, total); i++) events.push(event(first + i));
    stream.write({ sequence: r, events });
  }
  stream.end();
}
