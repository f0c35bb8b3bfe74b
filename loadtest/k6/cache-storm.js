// A burst of one identical new prompt (single flight: one model call), then distinct prompts.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { INFERENCE_THRESHOLDS, TOKENS, client, connect, params, pick } from './common.js';

const run = Date.now();

export const options = {
  scenarios: {
    storm: { executor: 'per-vu-iterations', vus: 200, iterations: 1, exec: 'identical' },
    distinct: { executor: 'constant-arrival-rate', rate: Number(__ENV.K6_RATE || 300), timeUnit: '1s', duration: __ENV.K6_DURATION || '20s', preAllocatedVUs: 100, maxVUs: 1000, startTime: '5s', exec: 'distinct' },
  },
  thresholds: INFERENCE_THRESHOLDS,
};

function complete(prompt, token) {
  connect();
  return client.invoke('keel.v1.InferenceService/Complete', {
    model: 'keel-tiny',
    messages: [{ role: 'user', content: prompt }],
    maxOutputTokens: 16,
    temperature: 0,
    seed: 7,
  }, params(token));
}

export function identical() {
  // One tenant (the cache is per tenant): the first token only.
  const res = complete(`the storm prompt of run ${run}`, TOKENS[0]);
  check(res, { ok: (r) => r && r.status === grpc.StatusOK });
}

export function distinct() {
  const res = complete(`distinct prompt ${__VU}-${__ITER} of run ${run}`, pick(TOKENS, __ITER));
  check(res, { ok: (r) => r && r.status === grpc.StatusOK });
}
