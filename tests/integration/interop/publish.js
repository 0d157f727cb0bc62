// A Node.js (@grpc/grpc-js) publisher: sends requests over the bidi Publish stream and
// prints the responses as one JSON line. Usage: node publish.js HOST:PORT RUN_ID
"use strict";
const path = require("path");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [target, runId] = process.argv.slice(2);
const definition = loader.loadSync("aggregator/v1/aggregator.proto", {
  includeDirs: [path.join(__dirname, "..", "..", "..", "protos")],
  keepCase: true,
  enums: String,
  longs: Number,
  defaults: true,
});
const { AggregatorService } = grpc.loadPackageDefinition(definition).aggregator.v1;
const client = new AggregatorService(target, grpc.credentials.createInsecure());

const timestamp = { seconds: 1767225600, nanos: 123456789 };
const event = (id, payload) => ({
  topic: "node", event_id: `${runId}-${id}`, timestamp, source: "grpc-js", payload,
});
// Repeats sit inside one request: pipelined requests may commit in parallel.
const requests = [
  { sequence: 1, events: [event(1, '{"from": "node"}'), event(2, '{"n": 2}')] },
  {
    sequence: 2,
    events: [event(3, '{"n": 3}'), event(3, '{"n": 3}'), { topic: "node", event_id: "" }],
  },
  { sequence: 3, events: [event(4, '{"n": 4}'), event(4, '{"changed": true}')] },
];

const responses = [];
const call = client.Publish();
call.on("data", (response) => responses.push(response));
call.on("error", (error) => {
  console.error(`stream failed: ${error.code} ${error.details}`);
  process.exit(1);
});
call.on("end", () => {
  console.log(JSON.stringify(responses));
  client.close();
});
for (const request of requests) call.write(request);
call.end();
