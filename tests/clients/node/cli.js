#!/usr/bin/env node
'use strict';
// pymigrate-node --target unix:/run/pymigrate.sock --protos DIR --google DIR COMMAND [ARG]
//   ls [--filter K=V]  the containers, as JSON lines {name, id, status, labels}
//   watch [--since N] [--count K] [--filter K=V]   events after cursor N, as JSON lines
//   drain --to ADDRESS [--filter K=V]              migrate every running (matching) container there
//   inspect NAME       the container as JSON; a refused call prints its status as JSON and exits 1
//   run IMAGE NAME     RunContainer (detached); a refused call as for inspect
// A refused call prints {grpcCode, grpcCodeName, details, status: {code, message, errorInfo, badRequest}}.

const { loadApi, connect, call, listContainers, watchEvents, drain, statusDetails, grpc } = require('./client');

function parseArgs(argv) {
  const options = {};
  const rest = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) options[argv[i].slice(2)] = argv[++i];
    else rest.push(argv[i]);
  }
  for (const required of ['target', 'protos', 'google']) {
    if (!options[required]) throw new Error(`--${required} is required`);
  }
  return { options, command: rest[0], args: rest.slice(1) };
}

function refused(api, err) {
  const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
  const report = { grpcCode: err.code, grpcCodeName: codeName, details: err.details, status: statusDetails(api, err) };
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exitCode = 1;
}

async function main() {
  const { options, command, args } = parseArgs(process.argv.slice(2));
  const api = loadApi(options.protos, options.google);
  const client = connect(api, options.target);
  try {
    const filter = options.filter ? [options.filter] : [];
    if (command === 'ls') {
      for (const c of await listContainers(client, { filter })) {
        const row = { name: c.spec.name, id: c.spec.container_id, status: c.state.status, labels: c.spec.labels };
        process.stdout.write(JSON.stringify(row) + '\n');
      }
    } else if (command === 'watch') {
      const count = options.count ? Number(options.count) : Infinity;
      for (const e of await watchEvents(client, { since: options.since || '0', filter, count })) {
        process.stdout.write(JSON.stringify(e) + '\n');
      }
    } else if (command === 'drain') {
      if (!options.to) throw new Error('drain needs --to ADDRESS');
      const outcomes = await drain(api, client, options.to, filter);
      for (const o of outcomes) process.stdout.write(JSON.stringify(o) + '\n');
      if (outcomes.some((o) => !o.ok)) process.exitCode = 1;
    } else if (command === 'inspect') {
      process.stdout.write(JSON.stringify(await call(client, 'InspectContainer', { name: args[0] })) + '\n');
    } else if (command === 'run') {
      process.stdout.write(JSON.stringify(await call(client, 'RunContainer', { image: args[0], name: args[1] })) + '\n');
    } else {
      throw new Error(`unknown command ${command}: expected ls, inspect, run, watch or drain`);
    }
  } catch (err) {
    if (err.code === undefined) throw err;
    refused(api, err);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  process.stderr.write(`pymigrate-node: ${err.message}\n`);
  process.exitCode = 2;
});
