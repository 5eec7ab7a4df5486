#!/usr/bin/env node
// Raw-frame probe: send a fixed sequence of request frames to a broker on a socket, in one
// encoding, and print every frame that comes back as hex plus what msgpackr / JSON.parse makes of
// it (flagging a plain map decoded as a JavaScript Map and int64 decoded as BigInt, which
// procmesh-js cannot use). For writing down what a broker does with procmesh-js's frames.
//
//   node probe.mjs <socket> <json|msgpackr|plain-msgpack> [quiet-ms]
//
// json          JSON text (procmesh-js codec 'json')
// msgpackr      msgpackr with structuredClone, records on (procmesh-js codec 'msgpack')
// plain-msgpack msgpackr with records off: plain MessagePack maps (what the Rust client writes)
//
// Requests go one at a time; after each, the probe waits for the reply with that id, or for
// `quiet-ms` (default 300) of silence when none comes (a request whose answer never arrives is
// reported as such), or for the connection to close.

import { Packr } from 'msgpackr';
import net from 'node:net';

const [socket, mode = 'json', quietArg] = process.argv.slice(2);
if (!socket) {
  console.error('usage: node probe.mjs <socket> <json|msgpackr|plain-msgpack> [quiet-ms]');
  process.exit(2);
}
const QUIET = Number(quietArg || 300);

const packr = new Packr({ structuredClone: true });
const plain = new Packr({ useRecords: false });
const encode = {
  json: (o) => Buffer.from(JSON.stringify(o)),
  msgpackr: (o) => packr.pack(o),
  'plain-msgpack': (o) => plain.pack(o),
}[mode];
if (!encode) throw new Error(`unknown mode ${mode}`);

function decodeReply(buf) {
  if (buf[0] === 0x7b) {
    try {
      return { how: 'json', value: JSON.parse(buf.toString('utf8')) };
    } catch (e) {
      return { how: 'json-error', value: e.message };
    }
  }
  try {
    return { how: 'msgpackr', value: packr.unpack(buf) };
  } catch (e) {
    return { how: 'msgpackr-error', value: e.message };
  }
}

function describe(v, path = '$', notes = []) {
  if (typeof v === 'bigint') notes.push(`${path} is BigInt ${v}n`);
  else if (v instanceof Map) {
    notes.push(`${path} is a Map (plain msgpack map)`);
    for (const [k, x] of v) describe(x, `${path}.${k}`, notes);
  } else if (Array.isArray(v)) v.forEach((x, i) => describe(x, `${path}[${i}]`, notes));
  else if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    for (const [k, x] of Object.entries(v)) describe(x, `${path}.${k}`, notes);
  }
  return notes;
}

const show = (v) =>
  JSON.stringify(v, (_, x) => {
    if (typeof x === 'bigint') return `${x}n`;
    if (x instanceof Map) return { '<Map>': Object.fromEntries(x) };
    if (x === undefined) return '<undefined>';
    return x;
  });

const PID = 'probe-pid-1';
const REQUESTS = [
  { t: 'hello', id: 1, name: 'probe', token: null, pid: PID },
  { t: 'ping', id: 2 },
  { t: 'set', id: 3, key: 'probe:k', value: { a: 100, big: 2 ** 40, list: [{ x: 1 }, { x: 2 }] }, ttl: undefined },
  { t: 'get', id: 4, key: 'probe:k' },
  { t: 'get', id: 5, key: 'probe:missing' },
  { t: 'set', id: 6, key: 'probe:n', value: 2 ** 32 + 5, ttl: undefined },
  { t: 'incr', id: 7, key: 'probe:n', by: 1 },
  { t: 'mget', id: 8, keys: ['probe:k', 'probe:missing'] },
  { t: 'lock', id: 9, key: 'probe:L', ttl: 30000, wait: 0 },
  { t: 'sub', id: 10, channel: 'probe.ch', replay: undefined },
  { t: 'pub', id: 11, channel: 'probe.ch', payload: { m: 1 }, acks: 'all', pid: PID, seq: 1 },
  { t: 'pub', id: 12, channel: 'probe.ch', payload: { m: 1 }, acks: 'all', pid: PID, seq: 1 },
  { t: 'pub', id: 13, channel: 'probe.ch', payload: { m: 2 }, pid: PID, seq: 3 },
  { t: 'pub', id: 14, channel: 'probe.ch', payload: { m: 'gap' }, pid: PID, seq: 2 },
  { t: 'sub', id: 15, channel: 'probe.other', replay: true },
  { t: 'unsub', id: 16, channel: 'probe.other' },
  { t: 'sub', id: 17, channel: 'probe.ch', since: 0 },
  { t: 'pub', channel: 'probe.ch', payload: 'fire-and-forget', acks: 0 },
  { t: 'call', id: 18, name: 'probe.none', args: [1, undefined], timeout: 1000 },
  { t: 'nope', id: 19 },
  { t: 'stats', id: 20 },
];

const sock = net.connect(socket);
let buf = Buffer.alloc(0);
let closed = false;
let waiter = null;
const frames = [];

sock.on('data', (chunk) => {
  buf = Buffer.concat([buf, chunk]);
  while (buf.length >= 4) {
    const len = buf.readUInt32BE(0);
    if (buf.length < 4 + len) break;
    const payload = buf.subarray(4, 4 + len);
    buf = buf.subarray(4 + len);
    const d = decodeReply(payload);
    frames.push(d);
    const notes = describe(d.value);
    const hex = payload.length > 96 ? `${payload.subarray(0, 96).toString('hex')}… (${payload.length} bytes)` : payload.toString('hex');
    console.log(`  <- [${d.how}] ${hex}`);
    console.log(`     ${show(d.value).slice(0, 600)}`);
    for (const n of notes) console.log(`     NOTE ${n}`);
    const id = d.value instanceof Map ? d.value.get('id') : d.value && d.value.id;
    if (waiter && waiter.id === id && id !== undefined) waiter.done();
  }
});
sock.on('close', () => {
  closed = true;
  console.log('  -- connection closed by the broker');
  if (waiter) waiter.done();
});
sock.on('error', (e) => console.log(`  -- socket error ${e.code || e.message}`));
await new Promise((r, j) => {
  sock.once('connect', r);
  sock.once('error', j);
});

for (const req of REQUESTS) {
  if (closed) break;
  const payload = encode(req);
  const frame = Buffer.alloc(4 + payload.length);
  frame.writeUInt32BE(payload.length, 0);
  payload.copy(frame, 4);
  console.log(`-> ${show(req)}`);
  console.log(`   ${payload.length > 96 ? `${payload.subarray(0, 96).toString('hex')}…` : payload.toString('hex')}`);
  await new Promise((resolve) => {
    let timer;
    const done = () => {
      clearTimeout(timer);
      waiter = null;
      resolve();
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (req.id !== undefined) console.log(`  -- no reply to id ${req.id} within ${QUIET} ms`);
        done();
      }, QUIET);
    };
    waiter = { id: req.id, done };
    arm();
    sock.write(frame);
  });
}
sock.removeAllListeners('close');
sock.destroy();
