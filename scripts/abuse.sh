#!/usr/bin/env bash
# Black-box abuse run against the broker (issue 12, exhaustion items 4-9, 11, 12, 15).
#
# Starts `procmesh serve` (PROCMESH_BIN, default target/release/procmesh) on a socket
# in a temp dir for each attack, runs the attack with a small Python client, and
# prints what the broker answered and its RSS (VmRSS, /proc) before and after.
# Bounded: every attack has a size and a time limit; the whole run takes well under
# a minute. Stops every broker it started (trap). Writes nothing but stdout:
# `scripts/abuse.sh | tee bench/results/<date>-abuse.md` records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PROCMESH_BIN:-target/release/procmesh}
[ -x "$BIN" ] || cargo build --release -p procmesh-broker >&2
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; true; }
trap cleanup EXIT

# serve NAME [prefix-cmd...] -- [flags...]: starts a broker, sets $SOCK and $PID.
serve() {
  local name=$1; shift
  local pre=()
  while [ "$1" != "--" ]; do pre+=("$1"); shift; done; shift
  SOCK=$TMP/$name.sock
  local hb=(--heartbeat 0); case " $* " in *" --heartbeat "*) hb=();; esac
  "${pre[@]}" "$BIN" serve --socket "$SOCK" "${hb[@]}" "$@" 2>"$TMP/$name.err" &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 200); do grep -q "serving at" "$TMP/$name.err" 2>/dev/null && return; sleep 0.05; done
  echo "broker $name did not start:"; cat "$TMP/$name.err"; exit 1
}
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status"; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

cat > "$TMP/c.py" <<'PY'
import json, os, socket, struct, sys, time
def conn(p):
    s = socket.socket(socket.AF_UNIX); s.connect(p); s.settimeout(20); return s
def send(s, v): b = json.dumps(v).encode(); s.sendall(struct.pack(">I", len(b)) + b)
def recv(s):
    h = b""
    while len(h) < 4:
        c = s.recv(4 - len(h))
        if not c: return None
        h += c
    n = struct.unpack(">I", h)[0]; b = b""
    while len(b) < n:
        c = s.recv(min(1 << 20, n - len(b)))
        if not c: return None
        b += c
    return json.loads(b)
def req(s, v, i=1):
    v["id"] = i; send(s, v)
    while True:
        f = recv(s)
        if f is None or f.get("id") == i: return f
def short(f):
    if f is None: return "connection closed"
    return json.dumps({k: f[k] for k in ("t", "code", "message") if k in f})[:160]
def closed(s, t=5):
    s.settimeout(t)
    try:
        while True:
            if not s.recv(65536): return True
    except (ConnectionResetError, BrokenPipeError): return True
    except socket.timeout: return False
p, what = sys.argv[1], sys.argv[2]
if what == "mget":
    s = conn(p); req(s, {"t": "set", "key": "big", "value": "x" * (1 << 20)})
    t = time.time(); f = req(s, {"t": "mget", "keys": ["big"] * 1000}, 2)
    print(f"mget 1000 x 1 MiB: {short(f)} in {time.time()-t:.2f}s; then ping: {short(req(s, {'t':'ping'}, 3))}")
elif what == "keys":
    s = conn(p)
    for h in range(2):
        req(s, {"t": "mset", "entries": [[f"{h}{i:06}" + "k" * 8000, 1] for i in range(5000)]}, 10 + h)
    f = req(s, {"t": "keys"}, 2)
    print(f"keys on 10 000 keys of 8 KB: {short(f)}; then ping: {short(req(s, {'t':'ping'}, 3))}")
elif what == "preauth":
    s = conn(p); s.sendall(struct.pack(">I", 64 << 20) + b"{" * 100000)
    f = recv(s); print(f"unauthenticated 64 MiB frame announced: {short(f)}; closed: {closed(s)}")
elif what == "idle":
    n = int(sys.argv[3]); cs = []
    for _ in range(n):
        s = conn(p); s.sendall(struct.pack(">I", 50000) + b"{"); cs.append(s)
    print(f"opened {n} unauthenticated connections (each trickling a partial frame)", flush=True)
    time.sleep(float(sys.argv[4]))
    for s in cs:
        try: s.sendall(b" ")
        except OSError: pass
    gone = sum(closed(s, 0.2) for s in cs)
    print(f"after the handshake deadline: {gone}/{n} closed by the broker")
elif what == "cap":
    cs = [conn(p) for _ in range(int(sys.argv[3]))]
    for s in cs: req(s, {"t": "ping"})
    s = conn(p); print(f"connection past maxConnections: {short(recv(s))}")
elif what == "emfile":
    served = refused = hung = 0; keep = []
    for i in range(int(sys.argv[3])):
        s = conn(p); s.settimeout(5)
        try: send(s, {"t": "ping", "id": i}); f = recv(s)
        except socket.timeout: hung += 1; continue
        except (ConnectionResetError, BrokenPipeError): f = {"t": "err", "message": "reset"}
        if f and f.get("t") == "pong": served += 1; keep.append(s)
        else: refused += 1; last = short(f)
    print(f"{served} served, {refused} refused ({last if refused else '-'}), {hung} hung")
    for s in keep: s.close()
    time.sleep(0.5); s = conn(p)
    print(f"after closing the served ones: {short(req(s, {'t':'ping'}, 9))}")
elif what == "subs":
    s = conn(p); n = int(sys.argv[3]); b = bytearray()
    for i in range(n):
        x = json.dumps({"t": "sub", "channel": f"c{i}"}).encode(); b += struct.pack(">I", len(x)) + x
    s.sendall(bytes(b)); f = req(s, {"t": "sub", "channel": "one-more"}, 2)
    print(f"{n} subscriptions, then one more: {short(f)}")
elif what == "calls":
    w = conn(p); req(w, {"t": "reg", "name": "slow"}); s = conn(p); n = int(sys.argv[3]); b = bytearray()
    for i in range(n):
        x = json.dumps({"t": "call", "name": "slow", "args": [], "id": 10 + i, "timeout": 600000}).encode()
        b += struct.pack(">I", len(x)) + x
    s.sendall(bytes(b)); f = req(s, {"t": "call", "name": "slow", "args": []}, 1)
    o = conn(p); st = req(o, {"t": "stats"}, 5)["value"]
    print(f"{n} calls in flight, then one more: {short(f)}; pendingCalls {st['pendingCalls']}", end="")
    s.close(); time.sleep(0.5); st = req(o, {"t": "stats"}, 6)["value"]
    print(f"; after the caller left: {st['pendingCalls']}")
elif what == "fanout":
    subs = [conn(p) for _ in range(12)]
    for s in subs: req(s, {"t": "sub", "channel": "big"})
    pub = conn(p); payload = "x" * (60 << 20)
    f = req(pub, {"t": "pub", "channel": "big", "payload": payload}, 2)
    st = req(pub, {"t": "stats"}, 3)["value"]
    print(f"60 MiB publish to 12 stalled subscribers: delivered {f.get('value')}, dropped {st['dropped']}, rss {st['memory']['rss']/2**20:.0f} MiB")
    f = req(pub, {"t": "pub", "channel": "big", "payload": payload, "acks": "all"}, 4)
    st = req(pub, {"t": "stats"}, 5)["value"]
    print(f"same with acks all: delivered {f.get('value')}, slowClosed {st['slowClosed']}, rss {st['memory']['rss']/2**20:.0f} MiB")
elif what == "deep":
    # 20 MiB of JSON nested 98 deep, set over JSON, read by a MessagePack client
    # (the frame is hand-encoded: {"t":"get","id":1,"key":"deep"}).
    v = "x" * (20 << 20)
    for i in range(98): v = {"n": i, "a": [True, None], "c": v}
    s = conn(p); req(s, {"t": "set", "key": "deep", "value": v})
    m = conn(p); get = b"\x83\xa1t\xa3get\xa2id\x01\xa3key\xa4deep"
    t = time.time(); m.sendall(struct.pack(">I", len(get)) + get)
    o = conn(p); pt = time.time(); pong = req(o, {"t": "ping"}, 7); pt = time.time() - pt
    h = b""
    while len(h) < 4: h += m.recv(4 - len(h))
    n = struct.unpack(">I", h)[0]; got = 0; head = b""
    while got < n:
        c = m.recv(min(1 << 20, n - got)); got += len(c)
        if len(head) < 16: head += c[:16]
    ok = b"\xa1t\xa2ok" in head[:16]
    print(f"MessagePack get of a 20 MiB JSON value nested 98 deep: {'ok' if ok else head!r}, {n} bytes in {time.time()-t:.2f}s; another client's ping meanwhile: {short(pong)} in {pt:.2f}s")
elif what == "incr":
    s = conn(p); a = req(s, {"t": "incr", "key": "n", "by": 1e308})
    b = req(s, {"t": "incr", "key": "n", "by": 1e308}, 2)
    print(f"incr by 1e308 twice: {short(a)} / {short(b)}; stored: {req(s, {'t':'get','key':'n'}, 3).get('value')}")
elif what == "room":
    s = conn(p); req(s, {"t": "set", "key": "k", "value": "v" * (3 << 20)})
    b = b""
    for i in range(3):
        x = json.dumps({"t": "get", "key": "k", "id": 10 + i}).encode(); b += struct.pack(">I", len(x)) + x
    s.sendall(b); fs = {}
    while len(fs) < 3:
        f = recv(s)
        if f is None: break
        fs[f.get("id")] = f
    st = req(s, {"t": "stats"}, 5)["value"]
    print(f"3 pipelined gets of 3 MiB, unread, sendHardLimit 8 MiB: {[fs[i]['t'] if i in fs else 'none' for i in (10, 11, 12)]}, third: {short(fs.get(12))}; tooBig {st['tooBig']}, slowClosed {st['slowClosed']}")
elif what == "stall":
    s = conn(p); req(s, {"t": "ping"}); pid = int(sys.argv[3])
    os.kill(pid, 19); time.sleep(4); os.kill(pid, 18)
    f = recv(s)
    if f and f.get("t") == "ping": send(s, {"t": "pong"})
    g = req(s, {"t": "ping"}, 2) if f else None
    print(f"after a 4 s SIGSTOP (heartbeat 1 s): got {short(f)}, then {short(g)}")
PY
py() { timeout 60 python3 -u "$TMP/c.py" "$SOCK" "$@" || echo "(attack client failed or timed out: rc $?)"; }

echo "# procmesh abuse run ($(date -u +%F), $(git rev-parse --short HEAD), $BIN)"
echo
attack() { echo "## $1"; }
attack "5. one small request, a huge reply (sendHardLimit 64 MiB)"
serve reply -- ; echo "rss before: $(rss $PID)"; py mget; py keys; echo "rss after: $(rss $PID)"; stop $PID
attack "7. unauthenticated peers (token set, handshakeTimeout 2 s)"
serve pre -- --token s3cret --handshake-timeout 2000; echo "rss before: $(rss $PID)"
py preauth; py idle 2000 4; echo "rss after: $(rss $PID)"; stop $PID
attack "7. connection cap (maxConnections 100)"
serve cap -- --max-connections 100; py cap 100; echo "rss: $(rss $PID)"; stop $PID
attack "8. EMFILE (RLIMIT_NOFILE 64, 100 connections)"
serve emfile prlimit --nofile=64:64 -- ; py emfile 100; echo "rss: $(rss $PID)"; stop $PID
attack "11. per-connection caps (defaults)"
serve caps -- ; echo "rss before: $(rss $PID)"; py subs 200000; py calls 100000; echo "rss after: $(rss $PID)"; stop $PID
attack "11. global output cap (maxOutputBytes 256 MiB)"
serve fan -- ; echo "rss before: $(rss $PID)"; py fanout; echo "rss after: $(rss $PID)"; stop $PID
attack "4. reply room and incr overflow (sendHardLimit 8 MiB)"
serve room -- --send-hard-limit 8MiB; py room; py incr; echo "rss: $(rss $PID)"; stop $PID
attack "9. JSON→MessagePack transcoding of a deep large value"
serve deep -- ; echo "rss before: $(rss $PID)"; py deep; echo "rss after: $(rss $PID)"; stop $PID
attack "12. files and identity"
# tried BIN ARGS...: runs a `serve` that must fail; prints its exit code and message.
tried() { local rc=0; timeout 20 "$BIN" serve --heartbeat 0 "$@" >"$TMP/t.out" 2>&1 || rc=$?; echo "exit $rc: $(tail -c 400 "$TMP/t.out" | tr '\n' ' ')"; }
serve files -- --persist-dir "$TMP/pdir/data"
echo "persist dir $(stat -c %a "$TMP/pdir/data"), files: $(cd "$TMP/pdir/data" && stat -c '%n %a' * | tr '\n' ' '), socket $(stat -c %a "$SOCK")"; stop $PID
ln -s "$TMP/victim" "$TMP/planted.sock.lock"
echo -n "symlink planted at the lock path: "; tried --socket "$TMP/planted.sock"
echo "  link followed (victim created): $([ -e "$TMP/victim" ] && echo yes || echo no)"
echo "not a socket" > "$TMP/file.sock"
echo -n "regular file planted at the socket path: "; tried --socket "$TMP/file.sock"
flock -n -o "$TMP/held.sock.lock" -c 'sleep 30' & FL=$!; PIDS+=("$FL"); sleep 0.3
echo -n "address lock held by another process (flock $FL): "; tried --socket "$TMP/held.sock"
kill "$FL" 2>/dev/null || true
attack "15. heartbeat after a broker stall"
serve stall -- --heartbeat 1000; py stall "$PID"; echo "rss: $(rss $PID)"; stop $PID
