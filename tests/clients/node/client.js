'use strict';
// A small pymigrate client in Node.js (docs/api.md): loads protos/pymigrate/v1/host.proto with
// @grpc/proto-loader, calls a daemon with @grpc/grpc-js, and reads refused calls the standard way:
// the google.rpc.Status in the `grpc-status-details-bin` trailer, with its ErrorInfo (reason,
// domain, metadata) and BadRequest (field violations). Meant to grow into the scheduler of issue 15
// (list by label, watch events, drain); today it lists and inspects containers.

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };
const DETAILS_KEY = 'grpc-status-details-bin';

// protoDir holds pymigrate/v1/host.proto; googleDir holds google/rpc/{status,error_details}.proto
// (googleapis-common-protos ships them: its site-packages directory).
function loadApi(protoDir, googleDir) {
  const files = ['pymigrate/v1/host.proto'];
  const definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protoDir] });
  const pymigrate = grpc.loadPackageDefinition(definition).pymigrate.v1;

  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(googleDir, target));
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return { Host: pymigrate.Host, rpc: root };
}

function connect(api, target) {
  return new api.Host(target, grpc.credentials.createInsecure());
}

function call(client, method, request, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

// Every container, page after page when the daemon paginates (next_page_token, AIP-158).
async function listContainers(client, { all = true, filter = [] } = {}) {
  const containers = [];
  let pageToken = '';
  do {
    const reply = await call(client, 'ListContainers', { all, filter, page_token: pageToken });
    containers.push(...reply.containers);
    pageToken = reply.next_page_token || '';
  } while (pageToken);
  return containers;
}

// The google.rpc.Status a refused call carries, its details unpacked; null without one.
function statusDetails(api, err) {
  const values = err.metadata ? err.metadata.get(DETAILS_KEY) : [];
  if (!values.length) return null;
  const Status = api.rpc.lookupType('google.rpc.Status');
  const status = Status.decode(values[0]);
  const out = { code: status.code, message: status.message, errorInfo: null, badRequest: null };
  for (const detail of status.details) {
    const typeName = detail.type_url.split('/').pop();
    const type = api.rpc.lookupType(typeName);
    const decoded = type.toObject(type.decode(detail.value), { defaults: true });
    if (typeName === 'google.rpc.ErrorInfo') out.errorInfo = decoded;
    if (typeName === 'google.rpc.BadRequest') out.badRequest = decoded;
  }
  return out;
}

module.exports = { loadApi, connect, call, listContainers, statusDetails, grpc };
