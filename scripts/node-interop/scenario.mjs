#!/usr/bin/env node
// Interop scenario: procmesh-js's own client (from a checkout at $PROCMESH_JS) against a broker
// already listening on a socket, in one codec. Prints `PASS name`, `FAIL name: why` (or
// `XFAIL name: why` for a procmesh-js 0.1.1 feature when XFAIL_011=1) and a summary line; exits 1
// if anything FAILed.
//
//   PROCMESH_JS=/path/to/procmesh-js node scenario.mjs <socket> <json|msgpack>
//
// The broker must run with pub/sub retention on (`pubsub: {persist: true, retention: 100}` in
// PROCMESH_BROKER_OPTS) for the replay checks; run.sh does that. Waits use protocol ordering
// (a ping round trip on the subscriber after the publisher's ack), not sleeps: the broker queues
// a message to every subscriber before it answers the publisher, and a connection's frames stay
// in order.

import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import { join, resolve } from 'node:path';
import { existsSync } from 'node:fs';

const [socket, codec = 'json'] = process.argv.slice(2);
const pjs = process.env.PROCMESH_JS;
if (!pjs || !existsSync(join(pjs, 'src', 'index.js'))) {
  console.log('SKIP: set PROCMESH_JS to a procmesh-js checkout (with src/index.js and node_modules)');
  process.exit(0);
}
if (!socket) {
  console.error('usage: PROCMESH_JS=... node scenario.mjs <socket> <json|msgpack>');
  process.exit(2);
}
const require = createRequire(join(resolve(pjs), 'package.json'));
const { createClient } = require(join(resolve(pjs), 'src', 'index.js'));

const xfail011 = process.env.XFAIL_011 === '1';
const STEP_TIMEOUT = Number(process.env.STEP_TIMEOUT_MS || 5000);
const results = { pass: 0, fail: 0, xfail: 0 };
const tag = `[${codec}]`;

function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([
    p,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms (${what})`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function check(name, fn, { v011 = false } = {}) {
  try {
    await withTimeout(Promise.resolve().then(fn), STEP_TIMEOUT, name);
    results.pass += 1;
    console.log(`PASS ${tag} ${name}`);
  } catch (err) {
    const why = (err && (err.code ? `${err.code}: ${err.message}` : err.message)) || String(err);
    if (v011 && xfail011) {
      results.xfail += 1;
      console.log(`XFAIL ${tag} ${name}: ${why}`);
    } else {
      results.fail += 1;
      console.log(`FAIL ${tag} ${name}: ${why}`);
    }
  }
}

function eq(actual, expected, what = 'value') {
  if (!isDeepStrictEqual(actual, expected)) {
    throw new Error(`${what}: got ${show(actual)}, want ${show(expected)}`);
  }
}
function show(v) {
  if (v instanceof Map) return `Map(${JSON.stringify([...v])})`;
  try {
    return JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? `${x}n` : x === undefined ? '<undefined>' : x));
  } catch {
    return String(v);
  }
}
async function rejectsWith(p, code) {
  try {
    await p;
  } catch (err) {
    if (err.code === code) return;
    throw new Error(`rejected with ${err.code} (${err.message}), want ${code}`);
  }
  throw new Error(`resolved, want a rejection with ${code}`);
}

const connect = (extra = {}) =>
  createClient({ address: socket, codec, autoSpawn: false, reconnect: false, callTimeout: STEP_TIMEOUT, ...extra });

const clients = [];
async function open(extra) {
  const c = await connect(extra);
  c.on('error', () => {});
  clients.push(c);
  return c;
}

const run = `${process.pid}`;
const k = (s) => `interop:${run}:${s}`;

let a;
let b;
await check('connect (hello / welcome)', async () => {
  a = await open();
  b = await open();
});
if (!a || !b) {
  console.log(`SUMMARY ${tag} pass=${results.pass} fail=${results.fail} xfail=${results.xfail}`);
  process.exit(1);
}

// ---------------------------------------------------------------- cache
const NESTED = { user: { id: 7, name: 'Ada', roles: ['admin', 'dev'] }, items: [{ sku: 'a', qty: 2 }, { sku: 'b', qty: 1 }], none: null };
await check('set/get nested value', async () => {
  eq(await a.set(k('nested'), NESTED), true, 'set');
  eq(await b.get(k('nested')), NESTED);
});
await check('get miss is undefined', async () => eq(await a.get(k('missing')), undefined));
await check('set with ttl, has, del', async () => {
  await a.set(k('ttl'), 'x', { ttl: 60000 });
  eq(await b.has(k('ttl')), true, 'has');
  eq(await b.del(k('ttl')), true, 'del');
  eq(await b.has(k('ttl')), false, 'has after del');
});
await check('keys lists a written key', async () => {
  const keys = await b.keys();
  if (!keys.includes(k('nested'))) throw new Error(`keys() lacks ${k('nested')}`);
});
await check('mset object / mget with a miss', async () => {
  await a.mset({ [k('m1')]: { n: 1 }, [k('m2')]: [1, { n: 2 }] });
  eq(await b.mget([k('m1'), k('nope'), k('m2')]), [{ n: 1 }, undefined, [1, { n: 2 }]]);
});
const VALUES = {
  ints64to127: [64, 65, 100, 126, 127],
  negs: [-1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31)],
  floats: [0.5, -2.25, 0.1, 1e300],
  large: [2 ** 32, 2 ** 53 - 1, -(2 ** 40)],
  strings: ['', 'a'.repeat(31), 'a'.repeat(32), 'a'.repeat(300), 'é'.repeat(40), '日本語', '🚀'],
  rows: Array.from({ length: 10 }, (_, i) => ({ id: i, name: `r${i}` })),
  shapes: Array.from({ length: 70 }, (_, i) => ({ [`k${i}`]: i })),
  odd: { '': 1, '1': 2, t: 'not-an-envelope' },
};
for (const [name, value] of Object.entries(VALUES)) {
  await check(`value round trip: ${name}`, async () => {
    await a.set(k(`v:${name}`), value);
    eq(await b.get(k(`v:${name}`)), value);
  });
}
await check('value round trip: shared reference', async () => {
  const s = { id: 1 };
  await a.set(k('shared'), { x: s, y: s });
  eq(await b.get(k('shared')), { x: { id: 1 }, y: { id: 1 } });
});

// ---------------------------------------------------------------- atomics
await check('incr / decr', async () => {
  eq(await a.incr(k('n')), 1, 'incr');
  eq(await b.incr(k('n'), 100), 101, 'incr 100');
  eq(await a.decr(k('n'), 2), 99, 'decr 2');
});
await check('incr past 32 bits', async () => {
  await a.set(k('big'), 2 ** 40);
  eq(await a.incr(k('big')), 2 ** 40 + 1);
});
await check('incr on a string fails ENOTNUMBER', async () => {
  await a.set(k('str'), 'x');
  await rejectsWith(a.incr(k('str')), 'ENOTNUMBER');
});
await check('cas: absent prev, match, mismatch, delete', async () => {
  eq(await a.cas(k('cas'), undefined, { v: 1 }), true, 'cas from absent');
  eq(await b.cas(k('cas'), { v: 2 }, { v: 3 }), false, 'cas mismatch');
  eq(await b.cas(k('cas'), { v: 1 }, { v: 2 }), true, 'cas match');
  eq(await a.cas(k('cas'), { v: 2 }, undefined), true, 'cas delete');
  eq(await a.has(k('cas')), false, 'deleted');
});

// ---------------------------------------------------------------- pub/sub
await check('pub/sub exact + wildcard, delivered count', async () => {
  const got = [];
  const offExact = await b.subscribe(k('ch.a'), (p, ch) => got.push(['exact', ch, p]));
  const offWild = await a.subscribe(`${k('ch.')}*`, (p, ch) => got.push(['wild', ch, p]));
  eq(await a.publish(k('ch.a'), { hello: 'world' }), 2, 'delivered');
  eq(await a.publish(k('ch.b'), [1, 2]), 1, 'delivered (wildcard only)');
  await b.ping();
  await a.ping();
  got.sort((x, y) => (x[0] + x[1]).localeCompare(y[0] + y[1]));
  eq(got, [
    ['exact', k('ch.a'), { hello: 'world' }],
    ['wild', k('ch.a'), { hello: 'world' }],
    ['wild', k('ch.b'), [1, 2]],
  ]);
  await offExact();
  await offWild();
  eq(await a.publish(k('ch.a'), 'after'), 0, 'delivered after unsubscribe');
});

// ---------------------------------------------------------------- rpc
await check('rpc: call, handler error, no handler', async () => {
  await b.register(k('add'), (x, y) => x + y);
  await b.register(k('fail'), () => {
    const e = new Error('nope');
    e.code = 'EMINE';
    throw e;
  });
  eq(await a.call(k('add'), [2, 40]), 42, 'result');
  await rejectsWith(a.call(k('fail'), []), 'EMINE');
  await rejectsWith(a.call(k('none'), []), 'ENOHANDLER');
  await b.unregister(k('add'));
  await rejectsWith(a.call(k('add'), [1, 1]), 'ENOHANDLER');
});

// ---------------------------------------------------------------- locks
await check('locks: exclusive, token, fenced writes', async () => {
  const relA = await a.lock(k('L'), { ttl: 10000 });
  if (!relA || typeof relA.token !== 'number') throw new Error(`lock: got ${show(relA)}`);
  eq(await b.lock(k('L'), { wait: 0 }), null, 'second lock with wait 0');
  eq(await a.fencedSet(k('L'), relA.token, k('guarded'), 1), true, 'fencedSet');
  await relA();
  const relB = await b.lock(k('L'), { ttl: 10000 });
  if (!relB || !(relB.token > relA.token)) throw new Error(`token not increasing: ${relA.token} then ${relB && relB.token}`);
  await rejectsWith(a.fencedSet(k('L'), relA.token, k('guarded'), 2), 'EFENCED');
  eq(await b.fencedCas(k('L'), relB.token, k('guarded'), 1, 3), true, 'fencedCas');
  eq(await b.fencedDel(k('L'), relB.token, k('guarded')), true, 'fencedDel');
  await relB();
});
await check('locks: waiter granted on release', async () => {
  const rel = await a.lock(k('W'), { ttl: 10000 });
  const waiting = b.lock(k('W'), { wait: 4000, ttl: 1000 });
  await a.ping();
  await rel();
  const got = await waiting;
  if (!got) throw new Error('waiter not granted');
  await got();
});
await check('withLock', async () => {
  eq(await a.withLock(k('WL'), async ({ set }) => {
    await set(k('wl'), 'in');
    return 'done';
  }), 'done');
  eq(await b.get(k('wl')), 'in');
});

// ---------------------------------------------------------------- stats
await check('stats fields (0.1.0)', async () => {
  const s = await a.stats();
  const want = ['uptimeMs', 'connections', 'cacheSize', 'ops', 'dropped', 'reaped', 'locks', 'lockWaiters', 'pendingCalls', 'subscriptions', 'procs', 'memory', 'cpuCoreFraction'];
  const missing = want.filter((f) => !(f in s));
  if (missing.length) throw new Error(`missing ${missing.join(', ')}`);
  if (s.ops instanceof Map || s.memory instanceof Map) throw new Error('stats maps decoded as Map (plain msgpack map, not a record)');
  if (typeof s.memory.rss !== 'number') throw new Error(`memory.rss: ${show(s.memory.rss)}`);
  if (typeof s.uptimeMs !== 'number') throw new Error(`uptimeMs is ${typeof s.uptimeMs}`);
});

// ---------------------------------------------------------------- 0.1.1 features
const v011 = { v011: true };
await check('stats fields duplicates, dedupSize (0.1.1)', async () => {
  const s = await a.stats();
  const missing = ['duplicates', 'dedupSize'].filter((f) => !(f in s));
  if (missing.length) throw new Error(`missing ${missing.join(', ')}`);
}, v011);
await check('welcome carries a producer id (0.1.1)', async () => {
  if (!a.pid) throw new Error(`client.pid is ${show(a.pid)} after hello`);
}, v011);
await check('acks 0 delivers, acks "all" counts (0.1.1)', async () => {
  const got = [];
  const off = await b.subscribe(k('acks'), (p) => got.push(p));
  eq(await a.publish(k('acks'), 'zero', { acks: 0 }), undefined, 'acks 0 result');
  eq(await a.publish(k('acks'), 'all', { acks: 'all' }), 1, 'acks all result');
  await b.ping();
  eq(got, ['zero', 'all'], 'received');
  await off();
}, v011);
await check('idempotent publish: a retried seq is answered null and delivered once (0.1.1)', async () => {
  const p = await open({ pubsub: { idempotent: true } });
  const got = [];
  const off = await b.subscribe(k('idem'), (m) => got.push(m));
  eq(await p.publish(k('idem'), 'm1'), 1, 'first');
  p.setSequence(k('idem'), 0);
  eq(await p.publish(k('idem'), 'm1'), null, 'retry');
  await b.ping();
  eq(got, ['m1'], 'received');
  await off();
}, v011);
await check('idempotent publish: a gap seq is delivered (0.1.1)', async () => {
  const p = await open({ pubsub: { idempotent: true } });
  const got = [];
  const off = await b.subscribe(k('gap'), (m) => got.push(m));
  p.setSequence(k('gap'), 1);
  eq(await p.publish(k('gap'), 'm2'), 1, 'seq 2');
  p.setSequence(k('gap'), 0);
  eq(await p.publish(k('gap'), 'm1'), 1, 'seq 1 (gap)');
  p.setSequence(k('gap'), 0);
  eq(await p.publish(k('gap'), 'm1 again'), null, 'seq 1 again');
  await b.ping();
  eq(got, ['m2', 'm1'], 'received');
  await off();
}, v011);
await check('retained channel: replay true, replay N, offsets (0.1.1)', async () => {
  const ch = k('ret');
  await a.publish(ch, { n: 1 }, { acks: 'all' });
  await a.publish(ch, { n: 2 }, { acks: 'all' });
  const late = await open();
  const all = [];
  await late.subscribe(ch, (m) => all.push(m), { replay: true });
  eq(all, [{ n: 1 }, { n: 2 }], 'replay true');
  const last = await open();
  const one = [];
  await last.subscribe(ch, (m) => one.push(m), { replay: 1 });
  eq(one, [{ n: 2 }], 'replay 1');
  if (typeof late._offsets.get(ch) !== 'number') throw new Error('no offset recorded (sub reply lacks offset, msg lacks offset)');
}, v011);
await check('reconnect catch-up via since (0.1.1)', async () => {
  const ch = k('catch');
  const s = await open({ reconnect: true });
  const got = [];
  await s.subscribe(ch, (m) => got.push(m));
  await a.publish(ch, 'a', { acks: 'all' });
  await s.ping();
  const back = new Promise((r) => s.once('reconnect', r));
  s.peer.destroy();
  await a.publish(ch, 'b', { acks: 'all' });
  await a.publish(ch, 'c', { acks: 'all' });
  await back;
  await s.ping();
  eq(got, ['a', 'b', 'c'], 'received');
}, v011);
await check('duplicates counted in stats (0.1.1)', async () => {
  const s = await a.stats();
  if (!(s.duplicates >= 1)) throw new Error(`duplicates = ${show(s.duplicates)}`);
}, v011);

for (const c of clients) await c.close();
console.log(`SUMMARY ${tag} pass=${results.pass} fail=${results.fail} xfail=${results.xfail}`);
process.exit(results.fail ? 1 : 0);
