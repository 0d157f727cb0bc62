// What both load scripts share: the run's settings and its events, with DUP_RATE of them
// repeating an earlier id with the same content (so each comes back DUPLICATE, never CONFLICT).
export const EVENTS = parseInt(__ENV.EVENTS || '20000', 10);
export const DUP_RATE = parseFloat(__ENV.DUP_RATE || '0.3');
export const VUS = parseInt(__ENV.VUS || '20', 10);
export const DISTINCT = Math.round(EVENTS * (1 - DUP_RATE));

// k6 options: `iterations` shared among the VUs (never more VUs than iterations).
export function sharedIterations(iterations, thresholds) {
  return {
    scenarios: {
      publish: {
        executor: 'shared-iterations',
        vus: Math.min(VUS, iterations),
        iterations,
        maxDuration: __ENV.MAX_DURATION || '10m',
      },
    },
    thresholds,
  };
}

// FRESH=1: every event is stamped with the time it is sent, as many of the original
// service's load scripts do, so a repeated id comes back with other content (a CONFLICT,
// which the HTTP face counts among the dropped duplicates).
export const FRESH = __ENV.FRESH === '1';

// Event n of the run (0 <= n < EVENTS): ids after the first DISTINCT repeat earlier ones.
export function event(n, topic) {
  const id = n % DISTINCT;
  return {
    topic,
    event_id: `e-${id}`,
    timestamp: FRESH
      ? new Date().toISOString()
      : new Date(Date.UTC(2024, 4, 1, 12, 0, 0) + id).toISOString(),
    source: 'k6',
    payload: { n: id, note: 'load test' },
  };
}
