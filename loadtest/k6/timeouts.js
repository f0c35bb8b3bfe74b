// A model that never answers (keel-tiny-timeout, with KEEL_INFERENCE_FAULT_MODELS=true) beside
// healthy traffic: the first-token deadline (or the model's breaker) ends every call cleanly.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { TOKENS, client, connect, params, pick } from './common.js';

const rate = Number(__ENV.K6_RATE || 20);
const common = { executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration: __ENV.K6_DURATION || '20s', preAllocatedVUs: 50, maxVUs: 500 };

export const options = {
  scenarios: {
    silent: { ...common, exec: 'silent' },
    healthy: { ...common, exec: 'healthy' },
  },
  thresholds: {
    'checks{scenario:silent}': ['rate==1'],
    'checks{scenario:healthy}': ['rate>0.999'],
    'grpc_req_duration{scenario:silent}': ['max<3000'],
    'grpc_req_duration{scenario:healthy}': ['p(95)<2000'],
  },
};

function complete(model) {
  connect();
  return client.invoke('keel.v1.InferenceService/Complete', {
    model,
    messages: [{ role: 'user', content: `k6 ${__VU}-${__ITER}` }],
    maxOutputTokens: 8,
  }, params(pick(TOKENS, __ITER)));
}

export function silent() {
  const res = complete('keel-tiny-timeout');
  check(res, { 'ended by deadline or breaker': (r) => r && (r.status === grpc.StatusDeadlineExceeded || r.status === grpc.StatusUnavailable) });
}

export function healthy() {
  const res = complete('keel-tiny');
  check(res, { ok: (r) => r && r.status === grpc.StatusOK });
}
