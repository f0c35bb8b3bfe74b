// Ramp to twice the measured peak (K6_PEAK, from `cargo xtask load ramp`), hold, then recover.
// Beyond capacity the gateway must refuse fast (RESOURCE_EXHAUSTED / UNAVAILABLE with
// retry-after), never collapse.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { DOCUMENTS, PEAK, TOKENS, client, connect, params, pick, refused } from './common.js';

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: Math.round(PEAK / 4),
      timeUnit: '1s',
      preAllocatedVUs: 500,
      maxVUs: 5000,
      stages: [
        { target: 2 * PEAK, duration: '30s' },
        { target: 2 * PEAK, duration: '10s' },
        { target: Math.round(PEAK / 2), duration: '5s' },
        { target: Math.round(PEAK / 2), duration: '10s' },
      ],
    },
  },
  thresholds: {
    // Served or refused by design; anything else is a failure.
    checks: ['rate>0.99'],
    'grpc_req_duration{expected_response:true}': ['p(99)<1000'],
  },
};

export default function () {
  connect();
  const res = client.invoke('keel.v1.DocumentService/GetDocument', { id: pick(DOCUMENTS, __ITER) }, params(pick(TOKENS, __ITER)));
  check(res, { 'served or refused fast': (r) => r && (r.status === grpc.StatusOK || refused(r)) });
}
