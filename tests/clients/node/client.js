'use strict';
// A small pymigrate client in Node.js (docs/api.md): loads protos/pymigrate/v1/host.proto with
// @grpc/proto-loader, calls a daemon with @grpc/grpc-js, and reads refused calls the standard way:
// the google.rpc.Status in the `grpc-status-details-bin` trailer, with its ErrorInfo (reason,
// domain, metadata) and BadRequest (field violations). The scheduler of issue 15 in small: list by
// label, watch events from a cursor, drain a host (migrate its containers to another).

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

// Events after cursor `since` until `count` arrived or none came for `idleMs` (WatchEvents sends an
// empty keep-alive about once a second, which does not count).
function watchEvents(client, { since = '0', filter = [], count = Infinity, idleMs = 3000 } = {}) {
  return new Promise((resolve, reject) => {
    const events = [];
    const stream = client.WatchEvents({ since, filter });
    let timer = null;
    const finish = () => { clearTimeout(timer); stream.cancel(); resolve(events); };
    const arm = () => { clearTimeout(timer); timer = setTimeout(finish, idleMs); };
    stream.on('data', (reply) => {
      if (!reply.event) return;
      events.push(reply.event);
      if (events.length >= count) finish(); else arm();
    });
    stream.on('error', (err) => { clearTimeout(timer); if (err.code === grpc.status.CANCELLED) resolve(events); else reject(err); });
    stream.on('end', () => { clearTimeout(timer); resolve(events); });
    arm();
  });
}

// One Migrate call to its result (the stream's last message); rejects with the call's error.
function migrate(client, name, dest, timeoutMs = 300000) {
  return new Promise((resolve, reject) => {
    const stream = client.Migrate({ name, dest }, { deadline: Date.now() + timeoutMs });
    let result = null;
    stream.on('data', (reply) => { if (reply.result) result = reply.result; });
    stream.on('error', reject);
    stream.on('end', () => (result ? resolve(result) : reject(new Error(`migrate ${name}: no result`))));
  });
}

// Drain: every running container matching `filter` migrated to `dest`, one after the other (a
// failure is reported and the rest still go: exactly one copy of each stays running either way).
async function drain(api, client, dest, filter = []) {
  const outcomes = [];
  for (const c of await listContainers(client, { all: false, filter })) {
    const name = c.spec.name;
    try {
      const result = await migrate(client, name, dest);
      outcomes.push({ name, ok: true, mode: result.mode, frozen_ms: result.stats ? result.stats.frozen_ms : null });
    } catch (err) {
      const status = err.code === undefined ? null : statusDetails(api, err);
      outcomes.push({ name, ok: false, error: err.details || err.message, reason: status && status.errorInfo ? status.errorInfo.reason : null });
    }
  }
  return outcomes;
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

module.exports = { loadApi, connect, call, listContainers, watchEvents, migrate, drain, statusDetails, grpc };
