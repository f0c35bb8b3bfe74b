// A free-tier tenant at ten times its contract beside top-tier tenants: its excess is refused
// (RESOURCE_EXHAUSTED with retry-after), the others see no refusals and keep their latency.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { DOCUMENTS, NOISY_TOKENS, TOKENS, client, connect, params, pick } from './common.js';

const duration = __ENV.K6_DURATION || '20s';

export const options = {
  scenarios: {
    quiet: { executor: 'constant-arrival-rate', rate: Number(__ENV.K6_RATE || 500), timeUnit: '1s', duration, preAllocatedVUs: 100, maxVUs: 1000, exec: 'quiet' },
    noisy: { executor: 'constant-arrival-rate', rate: 200, timeUnit: '1s', duration, preAllocatedVUs: 50, maxVUs: 500, exec: 'noisy' },
  },
  thresholds: {
    'checks{scenario:quiet}': ['rate>0.999'],
    'grpc_req_duration{scenario:quiet}': ['p(95)<300'],
    'checks{scenario:noisy}': ['rate>0.99'],
  },
};

function get(token) {
  connect();
  return client.invoke('keel.v1.DocumentService/GetDocument', { id: pick(DOCUMENTS, __ITER) }, params(token));
}

export function quiet() {
  const res = get(pick(TOKENS, __ITER));
  check(res, { 'served, never limited': (r) => r && r.status === grpc.StatusOK });
}

export function noisy() {
  const res = get(pick(NOISY_TOKENS, __ITER));
  // NOT_FOUND is fine here (another tenant's document IDs): what counts is served or refused.
  check(res, { 'served or rate limited': (r) => r && r.status !== grpc.StatusInternal && r.status !== grpc.StatusUnavailable });
}
