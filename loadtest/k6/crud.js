// The CRUD mix (60 % get, 20 % list, 10 % create, 10 % update) as an open model.
import grpc from 'k6/net/grpc';
import { check } from 'k6';
import { CRUD_THRESHOLDS, DOCUMENTS, TOKENS, client, connect, params, pick } from './common.js';

export const options = {
  scenarios: {
    crud: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.K6_RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.K6_DURATION || '30s',
      preAllocatedVUs: 200,
      maxVUs: 2000,
    },
  },
  thresholds: CRUD_THRESHOLDS,
};

export default function () {
  connect();
  const i = __ITER;
  const p = params(pick(TOKENS, i));
  const id = pick(DOCUMENTS, i);
  let res;
  switch (i % 10) {
    case 6:
    case 7:
      res = client.invoke('keel.v1.DocumentService/ListDocuments', { pageSize: 20, omitContent: true }, p);
      break;
    case 8:
      res = client.invoke('keel.v1.DocumentService/CreateDocument', { title: `k6 ${i}`, content: 'written under load' }, p);
      break;
    case 9:
      res = client.invoke('keel.v1.DocumentService/UpdateDocument', { id, title: `k6 ${i}`, content: 'updated under load' }, p);
      break;
    default:
      res = client.invoke('keel.v1.DocumentService/GetDocument', { id }, p);
  }
  check(res, { ok: (r) => r && r.status === grpc.StatusOK });
}
