// The same scenario over gRPC: the bidirectional Publish stream, through k6/net/grpc and our
// .proto. Each iteration opens a stream, sends REQUESTS requests of BATCH events, half-closes
// and checks every status of every response.
//
//   k6 run -e TARGET=127.0.0.1:50051 -e EVENTS=20000 -e VUS=20 publish_grpc.js
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { check } from 'k6';
import { EVENTS, event, sharedIterations } from './scenario.js';

const TARGET = __ENV.TARGET || '127.0.0.1:50051';
const BATCH = parseInt(__ENV.BATCH || '100', 10);
const REQUESTS = parseInt(__ENV.REQUESTS || '10', 10);
const TOPIC = __ENV.TOPIC || `k6-grpc-${Date.now()}`;
const PER_STREAM = BATCH * REQUESTS;

export const options = sharedIterations(Math.ceil(EVENTS / PER_STREAM), {
  checks: ['rate>0.99'],
});

const client = new grpc.Client();
client.load([__ENV.PROTO_ROOT || '../../protos'], 'aggregator/v1/aggregator.proto');

// The protobuf JSON form of a scenario event: payload is a string holding the JSON.
function message(n) {
  const e = event(n, TOPIC);
  return { ...e, eventId: e.event_id, event_id: undefined, payload: JSON.stringify(e.payload) };
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
    for (let i = sent; i < Math.min(sent + BATCH, total); i++) events.push(message(first + i));
    stream.write({ sequence: r, events });
  }
  stream.end();
}
