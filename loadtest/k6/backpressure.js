// Beyond capacity: slow streamed answers (keel-tiny-slow) at several times what the gateway's
// in-flight bound can hold. The excess must be refused at once, and memory stay bounded.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { TOKENS, client, connect, params, pick, refused } from './common.js';

export const options = {
  scenarios: {
    burst: { executor: 'constant-arrival-rate', rate: Number(__ENV.K6_RATE || 400), timeUnit: '1s', duration: __ENV.K6_DURATION || '15s', preAllocatedVUs: 500, maxVUs: 5000 },
  },
  thresholds: {
    checks: ['rate>0.99'],
    'grpc_req_duration{expected_response:false}': ['p(99)<100'],
  },
};

export default function () {
  connect();
  const res = client.invoke('keel.v1.InferenceService/Complete', {
    model: 'keel-tiny-slow',
    messages: [{ role: 'user', content: `k6 backpressure ${__VU}-${__ITER}` }],
    maxOutputTokens: 40,
  }, params(pick(TOKENS, __ITER)));
  check(res, { 'served or refused': (r) => r && (r.status === grpc.StatusOK || refused(r)) });
}
