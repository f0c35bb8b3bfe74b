// Streamed generation: time to first token and the whole answer, distinct prompts.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import { INFERENCE_THRESHOLDS, TOKENS, client, connect, params, pick } from './common.js';

const firstToken = new Trend('keel_time_to_first_token', true);
const whole = new Trend('keel_generation_duration', true);

export const options = {
  scenarios: {
    stream: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.K6_RATE || 100),
      timeUnit: '1s',
      duration: __ENV.K6_DURATION || '30s',
      preAllocatedVUs: 100,
      maxVUs: 1000,
    },
  },
  thresholds: {
    ...INFERENCE_THRESHOLDS,
    keel_time_to_first_token: ['p(95)<2000'],
    keel_generation_duration: ['p(95)<2000'],
  },
};

export default function () {
  connect();
  const started = Date.now();
  let first = 0;
  const stream = new grpc.Stream(client, 'keel.v1.InferenceService/Generate', params(pick(TOKENS, __ITER)));
  stream.on('data', () => {
    if (first === 0) {
      first = Date.now();
      firstToken.add(first - started);
    }
  });
  stream.on('error', (e) => check(e, { 'no stream error': () => false }));
  stream.on('end', () => {
    whole.add(Date.now() - started);
    check(first, { 'answered': (f) => f > 0 });
  });
  stream.write({
    model: 'keel-tiny',
    messages: [{ role: 'user', content: `tell me about k6 call ${__VU}-${__ITER}` }],
    maxOutputTokens: 32,
    temperature: 0,
    seed: 7,
  });
  stream.end();
}
