#!/usr/bin/env node
// Throughput of procmesh-js's own client (from a checkout at $PROCMESH_JS) against a broker
// already listening on a socket: one op (get or set) in one concurrency mode for D seconds.
// Prints one JSON line: ops, seconds, ops/s, the Node process's CPU (user+system ÷ wall, so
// 100 = one core busy) and, when BROKER_PID is set, the broker's CPU over the same window
// (utime+stime from /proc/PID/stat) in µs per request.
//
//   PROCMESH_JS=/path/to/procmesh-js [BROKER_PID=pid] node bench.mjs <socket> <json|msgpack> \
//       <mode> <get|set> [seconds=2]
//
// Modes: `1` (one request in flight, await each), `50` (50 loops, each awaiting its own
// request: 50 in flight), `burst1000` (await Promise.all of 1000 requests, repeat).
// bench.sh runs the matrix against both brokers and summarises it.

import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { existsSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const [socket, codec = 'json', mode = '1', op = 'get', secondsArg = '2'] = process.argv.slice(2);
const pjs = process.env.PROCMESH_JS;
if (!pjs || !existsSync(join(pjs, 'src', 'index.js'))) {
  console.log('SKIP: set PROCMESH_JS to a procmesh-js checkout (with src/index.js and node_modules)');
  process.exit(0);
}
if (!socket || !['1', '50', 'burst1000'].includes(mode) || !['get', 'set'].includes(op)) {
  console.error('usage: PROCMESH_JS=... node bench.mjs <socket> <json|msgpack> <1|50|burst1000> <get|set> [seconds]');
  process.exit(2);
}
const seconds = Number(secondsArg);
const require = createRequire(join(resolve(pjs), 'package.json'));
const { createClient } = require(join(resolve(pjs), 'src', 'index.js'));

const brokerPid = process.env.BROKER_PID ? Number(process.env.BROKER_PID) : 0;
const clkTck = brokerPid ? Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) : 100;
// utime+stime of a process in µs (fields 14 and 15 of /proc/PID/stat, after the `(comm)`).
function procCpuUs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1e6) / clkTck;
}

const KEYS = 1000;
const keys = Array.from({ length: KEYS }, (_, i) => `bench:${i}`);
const value = 'v'.repeat(32);

const client = await createClient({ address: socket, codec, autoSpawn: false, reconnect: false });
// Every key exists before a get run, so gets return a value rather than null.
await Promise.all(keys.map((k) => client.set(k, value)));
const one = op === 'get' ? (i) => client.get(keys[i % KEYS]) : (i) => client.set(keys[i % KEYS], value);
// Warm up (JIT, socket buffers) outside the measured window.
for (let i = 0; i < 2000; i++) await one(i);

let ops = 0;
let stop = false;
const cpu0 = process.cpuUsage();
const b0 = brokerPid ? procCpuUs(brokerPid) : 0;
const t0 = process.hrtime.bigint();
const timer = setTimeout(() => { stop = true; }, seconds * 1000);

if (mode === '1') {
  while (!stop) { await one(ops); ops += 1; }
} else if (mode === '50') {
  const loop = async (w) => {
    let i = w;
    while (!stop) { await one(i); i += 50; ops += 1; }
  };
  await Promise.all(Array.from({ length: 50 }, (_, w) => loop(w)));
} else {
  const batch = new Array(1000);
  while (!stop) {
    for (let i = 0; i < 1000; i++) batch[i] = one(i);
    await Promise.all(batch);
    ops += 1000;
  }
}

const wallUs = Number(process.hrtime.bigint() - t0) / 1000;
const b1 = brokerPid ? procCpuUs(brokerPid) : 0;
const cpu = process.cpuUsage(cpu0);
clearTimeout(timer);
await client.close();

const out = {
  codec,
  mode,
  op,
  ops,
  seconds: +(wallUs / 1e6).toFixed(3),
  opsPerSec: Math.round(ops / (wallUs / 1e6)),
  nodeCpuPct: +(((cpu.user + cpu.system) / wallUs) * 100).toFixed(1),
};
if (brokerPid) {
  out.brokerCpuPct = +(((b1 - b0) / wallUs) * 100).toFixed(1);
  out.brokerUsPerReq = +((b1 - b0) / ops).toFixed(2);
}
console.log(JSON.stringify(out));
