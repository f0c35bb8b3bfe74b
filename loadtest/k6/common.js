// Shared by every scenario: the gateway address, callers' tokens, the SLO thresholds and a
// gRPC client loaded with keel's public contracts.
//
//   K6_GATEWAY=127.0.0.1:50051 K6_TOKENS=tok1,tok2 K6_DOCUMENTS=id1,id2 k6 run crud.js
//
// Tokens are access tokens of top-tier users (`keelctl` or the OIDC flow gives them); the
// noisy-tenant scenario also needs K6_NOISY_TOKENS (free-tier users of one tenant).
import grpc from 'k6/net/grpc';

export const GATEWAY = __ENV.K6_GATEWAY || '127.0.0.1:50051';
export const TOKENS = (__ENV.K6_TOKENS || '').split(',').filter((t) => t.length > 0);
export const NOISY_TOKENS = (__ENV.K6_NOISY_TOKENS || '').split(',').filter((t) => t.length > 0);
export const DOCUMENTS = (__ENV.K6_DOCUMENTS || '').split(',').filter((d) => d.length > 0);
export const PEAK = Number(__ENV.K6_PEAK || 1000);

// The objectives `keel-loadtest` checks too: CRUD p95 < 300 ms, inference p95 < 2 s,
// errors < 0.1 %.
export const CRUD_THRESHOLDS = {
  grpc_req_duration: ['p(95)<300'],
  checks: ['rate>0.999'],
};
export const INFERENCE_THRESHOLDS = {
  grpc_req_duration: ['p(95)<2000'],
  checks: ['rate>0.999'],
};

export const client = new grpc.Client();
client.load(['../../proto'], 'keel/v1/documents.proto', 'keel/v1/inference.proto');

let connected = false;
export function connect() {
  if (!connected) {
    client.connect(GATEWAY, { plaintext: true });
    connected = true;
  }
}

export function pick(list, i) {
  return list[i % list.length];
}

export function params(token) {
  return { metadata: { authorization: `Bearer ${token}` }, timeout: '15s' };
}

// OK, or a refusal by design (RESOURCE_EXHAUSTED, or UNAVAILABLE while shedding load).
export function refused(res) {
  return res.status === grpc.StatusResourceExhausted || res.status === grpc.StatusUnavailable;
}
