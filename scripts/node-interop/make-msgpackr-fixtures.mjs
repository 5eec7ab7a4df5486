#!/usr/bin/env node
// Generate golden msgpackr fixtures for proto's MessagePack reader.
//
// Each fixture is a frame payload (no 4-byte length prefix) that procmesh-js 0.1.1 sends or
// expects, encoded exactly as its codec does: one `new Packr({ structuredClone: true })` per
// process, `packer.pack(obj)` per frame. Beside each `<name>.bin` we write `<name>.json`: the
// same object as plain JSON, i.e. what `JSON.stringify` makes of it (the JSON codec's view):
//   - a map field whose value is `undefined` is omitted (msgpackr writes it as `d4 00 00`);
//   - `undefined` inside an array is `null`;
//   - integers outside 32 bits are plain JSON integers (msgpackr writes them as float64 `cb`);
//   - a Buffer (only in `value-binary`) is `{"$bin": "<hex>"}` (see README; no JSON form exists).
// `manifest.json` lists every fixture with its direction, the msgpackr features it exercises,
// and a short note.
//
// Usage: node make-msgpackr-fixtures.mjs [out-dir]
//   (default out-dir: <repo>/proto/tests/fixtures/msgpackr; run `npm install` here first)

import { Packr } from 'msgpackr';
import { mkdirSync, writeFileSync, readdirSync, readFileSync, unlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const outDir = resolve(process.argv[2] || join(here, '..', '..', 'proto', 'tests', 'fixtures', 'msgpackr'));

// Exactly procmesh-js src/codec.js loadMsgpack(): one shared packer for every frame.
const packer = new Packr({ structuredClone: true });

// ------------------------------------------------------------------ value helpers

const str = (n, ch = 'a') => ch.repeat(n);
const shapes = (n) => Array.from({ length: n }, (_, i) => ({ [`k${i}`]: i }));
const records = (n) => Array.from({ length: n }, (_, i) => ({ id: i + 1, name: `item-${i + 1}`, tags: ['x', i % 2 === 0] }));
const wideMap = (n) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`field_${i}`, i]));

const INTS = [0, 1, 63, 64, 100, 127, 128, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1];
const LARGE_INTS = [2 ** 32, 2 ** 40 + 1, 2 ** 53 - 1, -(2 ** 31) - 1, -(2 ** 40), -(2 ** 53 - 1)];
const NEG_INTS = [-1, -31, -32, -33, -127, -128, -129, -32768, -32769, -(2 ** 31)];
const FLOATS = [0.5, 1.5, -2.25, 0.1, 1 / 3, 1e300, 5e-324, 3.4028234663852886e38, 1e21, -1e-7];

// A fixed, plausible stats snapshot (field set of procmesh-js Broker.snapshot()).
const STATS = {
  uptimeMs: 12345,
  connections: 2,
  cacheSize: 3,
  ops: { hello: 2, set: 10, get: 7, pub: 4, sub: 1 },
  dropped: 0,
  duplicates: 1,
  dedupSize: 1,
  reaped: 0,
  locks: 1,
  lockWaiters: 0,
  pendingCalls: 0,
  subscriptions: 1,
  procs: [{ name: 'add', workers: 1 }],
  memory: { rss: 52428800, heapTotal: 8388608, heapUsed: 6291456, external: 1048576, arrayBuffers: 16384 },
  cpuCoreFraction: 0.0123,
};

const NESTED = {
  user: { id: 7, name: 'Ada', roles: ['admin', 'dev'], address: { city: 'London', zip: 'N1' } },
  items: [
    { sku: 'a-1', qty: 2, price: 9.5 },
    { sku: 'b-2', qty: 1, price: 20 },
  ],
  flags: { active: true, deleted: false, note: null },
  empty: {},
  emptyList: [],
};

// A value in which one object is referenced twice (ordinary JS code produces this, e.g.
// `const a = {...}; set(k, { x: a, y: a })`). structuredClone makes msgpackr write the
// second occurrence as a reference extension (ext 0x70) to an id marked by ext 0x69.
const shared = { id: 1, label: 'shared' };
const SHARED_REF = { first: shared, second: shared, list: [shared, shared] };

// ------------------------------------------------------------------ the fixtures
// dir: 'c2b' = procmesh-js client -> broker; 'b2c' = procmesh-js broker -> client.
// Field order and undefined fields follow procmesh-js 0.1.1 src/client.js and src/broker.js.

const FIXTURES = [
  // ---- connection / control
  ['hello-first', 'c2b', { t: 'hello', id: 1, name: 'default', token: null, pid: null }, 'first connect: token and pid are null, not absent'],
  ['hello-reconnect', 'c2b', { t: 'hello', id: 1, name: 'orders', token: 's3cret', pid: 'p1733000000000_1' }, 're-presents the broker-minted pid'],
  ['hello-short', 'c2b', { t: 'hello', id: 1, name: 'x' }, 'the example from issue 11'],
  ['welcome', 'b2c', { t: 'welcome', id: 1, version: 4, broker: 'default', pid: 'p1733000000000_1' }, ''],
  ['ping-request', 'c2b', { t: 'ping', id: 9 }, ''],
  ['ping-heartbeat', 'b2c', { t: 'ping' }, 'broker heartbeat, no id'],
  ['pong-reply', 'b2c', { t: 'pong', id: 9 }, ''],
  ['pong-heartbeat', 'c2b', { t: 'pong' }, 'client answer to a heartbeat'],
  ['stats-request', 'c2b', { t: 'stats', id: 3 }, ''],
  ['stats-reply', 'b2c', { t: 'ok', id: 3, value: STATS }, 'nested maps inside a reply value'],
  ['shutdown', 'c2b', { t: 'shutdown', id: 4 }, ''],

  // ---- cache
  ['get', 'c2b', { t: 'get', id: 2, key: 'user:1' }, ''],
  ['get-reply-miss', 'b2c', { t: 'ok', id: 2, value: undefined }, 'a miss: value is undefined (d4 00 00), JSON omits it'],
  ['get-reply-nested', 'b2c', { t: 'ok', id: 2, value: NESTED }, ''],
  ['set-no-ttl', 'c2b', { t: 'set', id: 5, key: 'user:1', value: { name: 'Ada' }, ttl: undefined }, 'client.set without ttl sends ttl: undefined'],
  ['set-ttl', 'c2b', { t: 'set', id: 6, key: 'user:1', value: { name: 'Ada' }, ttl: 60000 }, ''],
  ['set-nested', 'c2b', { t: 'set', id: 7, key: 'cfg', value: NESTED, ttl: undefined }, 'maps inside values'],
  ['set-reply', 'b2c', { t: 'ok', id: 7, value: true }, ''],
  ['del', 'c2b', { t: 'del', id: 8, key: 'cfg' }, ''],
  ['has', 'c2b', { t: 'has', id: 8, key: 'cfg' }, ''],
  ['keys', 'c2b', { t: 'keys', id: 10 }, ''],
  ['keys-reply', 'b2c', { t: 'ok', id: 10, value: ['a', 'b', 'user:1'] }, ''],
  ['clear', 'c2b', { t: 'clear', id: 11 }, ''],
  ['mget', 'c2b', { t: 'mget', id: 12, keys: ['a', 'missing', 'c'] }, ''],
  ['mget-reply', 'b2c', { t: 'ok', id: 12, value: { values: [{ n: 1 }, null, { n: 3 }], found: [true, false, true] } }, 'records inside a record, same shape twice'],
  ['mset', 'c2b', { t: 'mset', id: 13, entries: [['a', { n: 1 }], ['b', [1, { n: 2 }]], ['c', 'plain']] }, 'entries are [key, value] arrays'],

  // ---- atomic
  ['incr', 'c2b', { t: 'incr', id: 14, key: 'count', by: 1 }, ''],
  ['decr', 'c2b', { t: 'decr', id: 15, key: 'count', by: 100 }, 'by = 100 is in 64..127: written cc 64'],
  ['incr-reply-large', 'b2c', { t: 'ok', id: 14, value: 2 ** 53 - 1 }, 'a counter past 32 bits arrives as float64'],
  ['cas-absent-prev', 'c2b', { t: 'cas', id: 16, key: 'cfg', prev: undefined, next: { v: 1 } }, 'absent prev is undefined'],
  ['cas-delete', 'c2b', { t: 'cas', id: 17, key: 'cfg', prev: { v: 1 }, next: undefined }, 'absent next deletes'],

  // ---- locks and fencing
  ['lock', 'c2b', { t: 'lock', id: 18, key: 'job:42', ttl: 30000, wait: 0 }, ''],
  ['lock-reply', 'b2c', { t: 'ok', id: 18, value: { acquired: true, token: 1025 } }, ''],
  ['lock-reply-denied', 'b2c', { t: 'ok', id: 18, value: { acquired: false, token: null } }, ''],
  ['unlock', 'c2b', { t: 'unlock', id: 19, key: 'job:42' }, ''],
  ['fset', 'c2b', { t: 'fset', id: 20, key: 'job:42', token: 1025, k: 'job:42:state', value: 'running', ttl: undefined }, ''],
  ['fcas', 'c2b', { t: 'fcas', id: 21, key: 'job:42', token: 1025, k: 'job:42:state', prev: 'running', next: 'done' }, ''],
  ['fdel', 'c2b', { t: 'fdel', id: 22, key: 'job:42', token: 1025, k: 'job:42:state' }, ''],

  // ---- pub/sub
  ['sub', 'c2b', { t: 'sub', id: 23, channel: 'orders', replay: undefined }, 'client.subscribe without replay sends replay: undefined'],
  ['sub-replay-all', 'c2b', { t: 'sub', id: 24, channel: 'orders.*', replay: true }, ''],
  ['sub-replay-n', 'c2b', { t: 'sub', id: 25, channel: 'orders', replay: 5 }, ''],
  ['sub-since', 'c2b', { t: 'sub', id: 26, channel: 'orders', since: 1030 }, 'sent on reconnect (Client._replay)'],
  ['sub-reply', 'b2c', { t: 'ok', id: 23, value: { ok: true, offset: 1030 } }, ''],
  ['unsub', 'c2b', { t: 'unsub', id: 27, channel: 'orders' }, ''],
  ['pub', 'c2b', { t: 'pub', id: 28, channel: 'orders', payload: { id: 7, total: 99.5 } }, 'acks 1 is omitted'],
  ['pub-acks-all', 'c2b', { t: 'pub', id: 29, channel: 'orders', payload: 'x', acks: 'all' }, ''],
  ['pub-acks-0', 'c2b', { t: 'pub', channel: 'orders', payload: 'fire', acks: 0 }, 'fire-and-forget: no id'],
  ['pub-idempotent', 'c2b', { t: 'pub', id: 30, channel: 'orders', payload: { n: 1 }, acks: 'all', pid: 'p1733000000000_1', seq: 1 }, ''],
  ['pub-reply-dedup', 'b2c', { t: 'ok', id: 30, value: null }, 'a deduplicated retry'],
  ['pub-reply-count', 'b2c', { t: 'ok', id: 28, value: 2 }, ''],
  ['msg', 'b2c', { t: 'msg', channel: 'orders', payload: { id: 7, total: 99.5 } }, ''],
  ['msg-offset', 'b2c', { t: 'msg', channel: 'orders', payload: { id: 7 }, offset: 1031 }, 'retained message'],

  // ---- rpc
  ['reg', 'c2b', { t: 'reg', id: 31, name: 'resize' }, ''],
  ['unreg', 'c2b', { t: 'unreg', id: 32, name: 'resize' }, ''],
  ['call', 'c2b', { t: 'call', id: 33, name: 'resize', args: [800, 600, { fit: 'cover' }], timeout: 5000 }, ''],
  ['call-undefined-arg', 'c2b', { t: 'call', id: 34, name: 'f', args: [1, undefined, 3], timeout: 30000 }, 'undefined in an array: JSON null'],
  ['invoke', 'b2c', { t: 'invoke', id: 1, name: 'resize', args: [800, 600, { fit: 'cover' }] }, ''],
  ['result', 'c2b', { t: 'result', id: 1, result: { w: 800, h: 600 } }, ''],
  ['result-undefined', 'c2b', { t: 'result', id: 2, result: undefined }, 'a handler that returns nothing'],
  ['result-error', 'c2b', { t: 'result', id: 3, error: { message: 'boom', code: 'EHANDLER' } }, ''],
  ['call-reply', 'b2c', { t: 'ok', id: 33, value: { w: 800, h: 600 } }, ''],
  ['err', 'b2c', { t: 'err', id: 33, message: 'no handler registered for "resize"', code: 'ENOHANDLER' }, ''],

  // ---- value coverage (as set values, the common carrier)
  ['value-ints', 'c2b', { t: 'set', id: 40, key: 'ints', value: INTS, ttl: undefined }, 'every small/medium integer class'],
  ['value-ints-64-127', 'c2b', { t: 'set', id: 41, key: 'r', value: [64, 65, 100, 126, 127, { a: 100 }], ttl: undefined }, 'never a bare byte 0x40..0x7f: that is a record reference'],
  ['value-neg-ints', 'c2b', { t: 'set', id: 42, key: 'neg', value: NEG_INTS, ttl: undefined }, ''],
  ['value-large-ints', 'c2b', { t: 'set', id: 43, key: 'big', value: LARGE_INTS, ttl: undefined }, 'outside 32 bits: float64'],
  ['value-floats', 'c2b', { t: 'set', id: 44, key: 'f', value: FLOATS, ttl: undefined }, ''],
  ['value-neg-zero', 'c2b', { t: 'set', id: 45, key: 'z', value: -0, ttl: undefined }, 'msgpackr writes -0 as 00'],
  ['value-bool-null', 'c2b', { t: 'set', id: 46, key: 'b', value: [true, false, null], ttl: undefined }, ''],
  ['value-str-0', 'c2b', { t: 'set', id: 47, key: 's', value: '', ttl: undefined }, ''],
  ['value-str-31', 'c2b', { t: 'set', id: 48, key: 's', value: str(31), ttl: undefined }, 'longest fixstr'],
  ['value-str-32', 'c2b', { t: 'set', id: 49, key: 's', value: str(32), ttl: undefined }, ''],
  ['value-str-255', 'c2b', { t: 'set', id: 50, key: 's', value: str(255), ttl: undefined }, ''],
  ['value-str-256', 'c2b', { t: 'set', id: 51, key: 's', value: str(256), ttl: undefined }, ''],
  ['value-str-65536', 'c2b', { t: 'set', id: 53, key: 's', value: str(65536), ttl: undefined }, 'str32'],
  ['value-str-utf8', 'c2b', { t: 'set', id: 54, key: 'ключ', value: ['é', 'naïve café', '日本語テキスト', '🚀🚀', str(20, 'ж'), str(90, 'é')], ttl: undefined }, 'multi-byte strings; header chosen from byte length'],
  ['value-arrays', 'c2b', { t: 'set', id: 55, key: 'a', value: [[], Array(15).fill(1), Array(16).fill(2), Array(65536).fill(0)], ttl: undefined }, 'fixarray, array16, array32'],
  ['value-wide-map', 'c2b', { t: 'set', id: 56, key: 'w', value: [wideMap(16), wideMap(300)], ttl: undefined }, 'records with 16 and 300 keys'],
  ['value-odd-keys', 'c2b', { t: 'set', id: 57, key: 'o', value: { '': 1, '1': 2, 'a b': 3, 'ключ': 4, t: 'not-an-envelope' }, ttl: undefined }, 'empty, numeric-looking and non-ASCII keys'],
  ['value-records-array', 'c2b', { t: 'set', id: 58, key: 'rows', value: records(20), ttl: undefined }, 'array of same-shape maps: one definition, then references'],
  ['value-many-shapes', 'c2b', { t: 'set', id: 59, key: 'shapes', value: shapes(100), ttl: undefined }, 'more distinct shapes than the 64 one-byte record ids'],
  ['value-shared-ref', 'c2b', { t: 'set', id: 60, key: 'shared', value: SHARED_REF, ttl: undefined }, 'structuredClone reference extensions (0x69 id, 0x70 pointer); JSON repeats the object'],
  ['value-envelope-shape', 'c2b', { t: 'set', id: 61, key: 'e', value: { t: 'set', id: 61, key: 'e', value: 1, ttl: 5 }, ttl: undefined }, 'a value with the same shape as its envelope reuses its record id'],
  ['value-binary', 'c2b', { t: 'set', id: 62, key: 'bin', value: { small: Buffer.from([0, 1, 2, 255]), empty: Buffer.alloc(0), big: Buffer.alloc(300, 7) }, ttl: undefined }, 'a Buffer value (msgpack codec only): bin8/bin16; JSON form is {"$bin": hex}'],
];

// ------------------------------------------------------------------ JSON form

function toPlainJson(v) {
  if (v === undefined) return undefined;
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return v;
  if (typeof v === 'number') return Object.is(v, -0) ? 0 : v;
  if (Buffer.isBuffer(v)) return { $bin: v.toString('hex') };
  if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : toPlainJson(x)));
  const out = {};
  for (const [k, x] of Object.entries(v)) {
    if (x !== undefined) out[k] = toPlainJson(x);
  }
  return out;
}

// What msgpackr decodes should equal the object, modulo the JSON normalisation above.
function normDecoded(v) {
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString('hex') };
  return toPlainJsonFromDecoded(v);
}
function toPlainJsonFromDecoded(v) {
  if (v === undefined) return undefined;
  if (v === null || typeof v !== 'object') return typeof v === 'number' && Object.is(v, -0) ? 0 : v;
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString('hex') };
  if (v instanceof Map) throw new Error('decoded a Map: a fixture would contain a plain map');
  if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : toPlainJsonFromDecoded(x)));
  const out = {};
  for (const [k, x] of Object.entries(v)) {
    if (x !== undefined) out[k] = toPlainJsonFromDecoded(x);
  }
  return out;
}

// ------------------------------------------------------------------ feature scan

// Walk the bytes as msgpackr's reader would (records included) and name every encoding met, so
// the manifest says which fixture exercises what. Throws on anything it does not understand.
function features(buf) {
  const f = new Set();
  const defined = new Map(); // record slot id -> key count
  let pos = 0;
  const u8 = () => buf[pos++];
  const be = (n) => {
    let v = 0;
    for (let i = 0; i < n; i++) v = v * 256 + buf[pos++];
    return v;
  };
  const skip = (n) => {
    pos += n;
  };
  function value() {
    const b = u8();
    if (b <= 0x3f) return f.add('positive-fixint');
    if (b <= 0x7f) {
      if (!defined.has(b)) throw new Error(`reference to undefined record 0x${b.toString(16)}`);
      f.add('record-reference');
      for (let i = 0; i < defined.get(b); i++) value();
      return;
    }
    if (b <= 0x8f) return f.add('plain-map'), pairs(b & 0x0f);
    if (b <= 0x9f) return f.add('fixarray'), items(b & 0x0f);
    if (b <= 0xbf) return f.add('fixstr'), skip(b & 0x1f);
    if (b >= 0xe0) return f.add('negative-fixint');
    switch (b) {
      case 0xc0: return f.add('nil');
      case 0xc2: case 0xc3: return f.add('bool');
      case 0xc4: f.add('bin8'); return skip(be(1));
      case 0xc5: f.add('bin16'); return skip(be(2));
      case 0xc6: f.add('bin32'); return skip(be(4));
      case 0xca: f.add('float32'); return skip(4);
      case 0xcb: f.add('float64'); return skip(8);
      case 0xcc: f.add('uint8'); return skip(1);
      case 0xcd: f.add('uint16'); return skip(2);
      case 0xce: f.add('uint32'); return skip(4);
      case 0xcf: f.add('uint64'); return skip(8);
      case 0xd0: f.add('int8'); return skip(1);
      case 0xd1: f.add('int16'); return skip(2);
      case 0xd2: f.add('int32'); return skip(4);
      case 0xd3: f.add('int64'); return skip(8);
      case 0xd9: f.add('str8'); return skip(be(1));
      case 0xda: f.add('str16'); return skip(be(2));
      case 0xdb: f.add('str32'); return skip(be(4));
      case 0xdc: f.add('array16'); return items(be(2));
      case 0xdd: f.add('array32'); return items(be(4));
      case 0xde: f.add('plain-map'); return pairs(be(2));
      case 0xdf: f.add('plain-map'); return pairs(be(4));
      case 0xd4: {
        const type = u8();
        const data = u8();
        if (type === 0x72) {
          if (defined.has(data)) f.add('record-redefinition');
          f.add('record-definition');
          const keysAt = pos;
          const n = arrayLen();
          pos = keysAt;
          value(); // the key array
          defined.set(data, n);
          for (let i = 0; i < n; i++) value();
          return;
        }
        if (type === 0x00 && data === 0x00) return f.add('undefined');
        throw new Error(`fixext1 type 0x${type.toString(16)}`);
      }
      case 0xd6: {
        const type = u8();
        skip(4);
        if (type === 0x69) {
          f.add('ext-0x69-id');
          return value(); // the object the id labels follows
        }
        if (type === 0x70) return f.add('ext-0x70-pointer');
        if (type === 0xff) return f.add('timestamp32');
        throw new Error(`fixext4 type 0x${type.toString(16)}`);
      }
      default:
        throw new Error(`unexpected byte 0x${b.toString(16)} at ${pos - 1}`);
    }
  }
  function arrayLen() {
    const b = u8();
    if (b >= 0x90 && b <= 0x9f) return b & 0x0f;
    if (b === 0xdc) return be(2);
    if (b === 0xdd) return be(4);
    throw new Error('record keys are not an array');
  }
  function items(n) {
    for (let i = 0; i < n; i++) value();
  }
  function pairs(n) {
    for (let i = 0; i < 2 * n; i++) value();
  }
  value();
  if (pos !== buf.length) throw new Error(`trailing bytes: ${buf.length - pos}`);
  return [...f].sort();
}

// ------------------------------------------------------------------ write

mkdirSync(outDir, { recursive: true });
for (const f of readdirSync(outDir)) {
  if (f.endsWith('.bin') || f.endsWith('.json')) unlinkSync(join(outDir, f));
}

const require = createRequire(import.meta.url);
let msgpackrVersion = 'unknown';
try {
  // msgpackr's exports map hides package.json; walk up from its entry point to find it.
  let d = dirname(require.resolve('msgpackr'));
  for (let i = 0; i < 4 && msgpackrVersion === 'unknown'; i++, d = dirname(d)) {
    try {
      const pkg = JSON.parse(readFileSync(join(d, 'package.json'), 'utf8'));
      if (pkg.name === 'msgpackr') msgpackrVersion = pkg.version;
    } catch {
      /* not here */
    }
  }
} catch {
  /* keep unknown */
}

const manifest = [];
const seen = new Set();
for (const [name, dir, obj, note] of FIXTURES) {
  if (seen.has(name)) throw new Error(`duplicate fixture name ${name}`);
  seen.add(name);
  const bin = packer.pack(obj);
  const json = toPlainJson(obj);
  const back = normDecoded(packer.unpack(bin));
  if (!isDeepStrictEqual(back, json)) {
    throw new Error(`${name}: msgpackr round trip differs from the JSON form`);
  }
  if (!(back && typeof back === 'object' && !Array.isArray(back) && typeof back.t === 'string')) {
    throw new Error(`${name}: envelope does not decode as an object with t`);
  }
  writeFileSync(join(outDir, `${name}.bin`), bin);
  writeFileSync(join(outDir, `${name}.json`), `${JSON.stringify(json)}\n`);
  manifest.push({
    name,
    direction: dir,
    bytes: bin.length,
    head: Buffer.from(bin.subarray(0, 24)).toString('hex'),
    features: features(bin),
    binary: name === 'value-binary',
    note,
  });
}

writeFileSync(
  join(outDir, 'manifest.json'),
  `${JSON.stringify(
    {
      generator: 'scripts/node-interop/make-msgpackr-fixtures.mjs',
      encoder: `msgpackr ${msgpackrVersion}, new Packr({ structuredClone: true }), one packer for all frames`,
      node: process.version,
      fixtures: manifest,
    },
    null,
    1
  )}\n`
);

console.log(`wrote ${manifest.length} fixtures to ${outDir}`);
