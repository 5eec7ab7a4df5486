#!/usr/bin/env node
// Check that MessagePack frames written by *our* encoder decode in msgpackr the way procmesh-js
// needs them to: for every `<name>.bin` in a directory with a `<name>.json` beside it, decode the
// bin with `new Packr({ structuredClone: true })` (procmesh-js's codec) and require
//   - no JavaScript Map anywhere (a plain MessagePack map decodes as a Map, which procmesh-js
//     ignores as an envelope and hands its users as values: maps must be written as records),
//   - no BigInt anywhere (int64/uint64 `d3`/`cf` decode as BigInt even when small),
//   - an envelope object with a string `t`, unless the json file is not an object with `t`,
//   - the decoded value equal to the JSON (absent = omitted, as in the golden fixtures; a
//     `{"$bin": hex}` object stands for binary).
// Prints `PASS name` / `FAIL name: why`; exits 1 on any failure, 0 (with SKIP) on an empty dir.
//
//   node check-msgpackr-decode.mjs <dir>
//
// The directory is meant to be filled by a Rust test that encodes each golden fixture's JSON
// (proto/tests/fixtures/msgpackr/*.json) with our MessagePack writer.

import { Packr } from 'msgpackr';
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';

const dir = process.argv[2];
if (!dir || !existsSync(dir)) {
  console.error('usage: node check-msgpackr-decode.mjs <dir with name.bin + name.json pairs>');
  process.exit(2);
}
const packr = new Packr({ structuredClone: true });

function problems(v, path, out) {
  if (typeof v === 'bigint') out.push(`${path} is BigInt ${v}n`);
  else if (v instanceof Map) {
    out.push(`${path} is a Map (plain MessagePack map, not a record)`);
    for (const [k, x] of v) problems(x, `${path}.${String(k)}`, out);
  } else if (Array.isArray(v)) v.forEach((x, i) => problems(x, `${path}[${i}]`, out));
  else if (v && typeof v === 'object' && !(v instanceof Uint8Array)) {
    for (const [k, x] of Object.entries(v)) problems(x, `${path}.${k}`, out);
  }
  return out;
}

function plain(v) {
  if (v === undefined) return undefined;
  if (v instanceof Uint8Array) return { $bin: Buffer.from(v).toString('hex') };
  if (typeof v === 'bigint') return Number(v);
  if (v instanceof Map) return plain(Object.fromEntries(v));
  if (Array.isArray(v)) return v.map((x) => (x === undefined ? null : plain(x)));
  if (v && typeof v === 'object') {
    const o = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) o[k] = plain(x);
    return o;
  }
  return Object.is(v, -0) ? 0 : v;
}

const names = readdirSync(dir)
  .filter((f) => f.endsWith('.bin') && existsSync(join(dir, f.replace(/\.bin$/, '.json'))))
  .map((f) => f.replace(/\.bin$/, ''))
  .sort();
if (names.length === 0) {
  console.log(`SKIP: no <name>.bin + <name>.json pairs in ${dir}`);
  process.exit(0);
}

let failed = 0;
for (const name of names) {
  const bin = readFileSync(join(dir, `${name}.bin`));
  const want = JSON.parse(readFileSync(join(dir, `${name}.json`), 'utf8'));
  let got;
  try {
    got = packr.unpack(bin);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: msgpackr cannot decode it: ${e.message}`);
    continue;
  }
  const why = problems(got, '$', []);
  const envelope = want && typeof want === 'object' && !Array.isArray(want) && typeof want.t === 'string';
  if (envelope && !(got && typeof got === 'object' && !(got instanceof Map) && typeof got.t === 'string')) {
    why.push('procmesh-js would not see an envelope (msg.t is undefined)');
  }
  if (!isDeepStrictEqual(plain(got), want)) why.push(`decodes to ${JSON.stringify(plain(got)).slice(0, 200)}`);
  if (why.length) {
    failed += 1;
    console.log(`FAIL ${name}: ${why.slice(0, 4).join('; ')}${why.length > 4 ? `; +${why.length - 4} more` : ''}`);
  } else {
    console.log(`PASS ${name}`);
  }
}
console.log(`SUMMARY checked=${names.length} failed=${failed}`);
process.exit(failed ? 1 : 0);
