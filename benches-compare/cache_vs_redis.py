"""Cache writes and reads: mpreg replicated cache vs Redis (AOF), one harness.

    apt-get install -y redis-server
    pip install redis websockets
    cargo build --release -p mpreg-daemon      # from the repository root
    python3 benches-compare/cache_vs_redis.py

Both systems run the SAME client loop below (`measure`): N clients (1, 64)
spread over up to 16 connections; each client sends one request and awaits
its reply before the next, for T seconds. Per N, a `put` phase writes keys
`k<i>` (i = a shared counter modulo KEYSPACE) with a 100-byte string value,
then a `get` phase reads keys that exist: it cycles over the first
HOT_KEYS (1,000) keys written, so after each key's first read both systems
answer from memory. Only the two-line "do one operation and wait for the reply" differs:

- mpreg: `cache-request` frames over WebSocket, replies matched by `u`
  (several clients share one WebSocket, requests are pipelined). A `put`
  reply means the write is a committed, fsynced raft log event in RocksDB;
  a `get` is served from the memory tier (L1) after the entry's first read
  from RocksDB (L2). The L1/L2 split of the answers is reported.
- Redis: redis-py asyncio SET / GET of the same keys and values, on a
  `redis-server` with `--appendonly yes` and `--appendfsync always` (fsync
  before each reply, like mpreg), then with `--appendfsync everysec` (NOT
  fsync per write). RDB snapshots are off (`--save ""`). RESP has no request
  ids, so redis-py opens one socket per in-flight command: the clients
  sharing a "connection" (one `redis.asyncio.Redis`) get their own sockets
  from its pool, and both systems have N requests in flight.

Every get checks the value it read; a miss or a wrong value counts as an
error. Client CPU per operation (this Python process) is reported because on
a small machine the client can be the bottleneck, for both systems alike.

Servers listen on 127.0.0.1 only; their data dirs are in one temp dir (same
disk). Environment: BENCH_SECONDS (T, default 5), BENCH_DIR (parent of the
temp dir, default /tmp), MPREG_DAEMON (default
target/release/mpreg-daemon of this repository), REDIS_SERVER (default
`redis-server` on PATH).
"""

import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import websockets

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
CLIENTS = (1, 64)
MAX_CONNECTIONS = 16
KEYSPACE = 100_000
HOT_KEYS = 1_000
VALUE = ("v" * 100)  # 100 bytes, the same for every key and both systems
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPREG_DAEMON = os.environ.get(
    "MPREG_DAEMON", os.path.join(REPO, "target", "release", "mpreg-daemon")
)
REDIS_SERVER = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


# ---- the shared harness ---------------------------------------------------

async def measure(connect, op, clients: int, next_key) -> dict:
    """N clients over min(N, 16) connections; each awaits every reply.

    `op(conn, key)` does one operation and returns True if the answer is
    right (get: the value read is VALUE)."""
    conns = [await connect() for _ in range(min(clients, MAX_CONNECTIONS))]
    latencies: list[float] = []
    errors = 0

    async def client(conn, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            key = next_key()
            t0 = time.perf_counter()
            try:
                ok = await op(conn, key)
            except Exception:
                ok = False
            if not ok:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + SECONDS
    await asyncio.gather(*(client(conns[k % len(conns)], deadline) for k in range(clients)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    for conn in conns:
        await conn.close()
    latencies.sort()
    n = len(latencies)
    return {
        "ops_per_s": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "client_cpu_us": cpu / max(n, 1) * 1e6,
        "errors": errors,
    }


async def put_then_get(connect, put, get, notes=None) -> list[tuple]:
    """For each N: T s of puts, then T s of gets of the first HOT_KEYS keys."""
    rows = []
    written = 0  # keys k0 .. k<written-1> exist after the first put phase
    for n in CLIENTS:
        counter = itertools.count()
        r = await measure(connect, put, n, lambda: f"k{next(counter) % KEYSPACE}")
        # a put still counts toward `written` if it failed: its key is read
        # later and then counts as a get error, so failures cannot hide.
        written = max(written, min(next(counter), KEYSPACE))
        rows.append(("put", n, r, notes() if notes else ""))
        reads, hot = itertools.count(), min(written, HOT_KEYS)
        r = await measure(connect, get, n, lambda: f"k{next(reads) % hot}")
        rows.append(("get", n, r, notes() if notes else ""))
    return rows


# ---- mpreg -----------------------------------------------------------------

class MpregConn:
    """One WebSocket; replies matched to requests by `u`."""

    def __init__(self, ws):
        self.ws, self.pending, self.ids = ws, {}, itertools.count()
        self.reader = asyncio.create_task(self._read())

    async def _read(self):
        async for frame in self.ws:
            reply = json.loads(frame)
            fut = self.pending.pop(reply.get("u"), None)
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def cache(self, request: dict) -> dict:
        u = f"c{next(self.ids)}"
        fut = self.pending[u] = asyncio.get_running_loop().create_future()
        request["role"], request["u"] = "cache-request", u
        await self.ws.send(json.dumps(request))
        return await fut

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


async def bench_mpreg(tmp: str) -> list[tuple]:
    data = os.path.join(tmp, "mpreg")
    ready = os.path.join(tmp, "mpreg-ready.json")
    log = open(os.path.join(tmp, "mpreg.log"), "wb")
    proc = subprocess.Popen([MPREG_DAEMON, "--data-dir", data, "--listen", "127.0.0.1:0",
                             "--admin-listen", "127.0.0.1:0", "--ready-file", ready],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            if os.path.exists(ready) or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        url = json.load(open(ready))["client_url"]

        async def connect():
            return MpregConn(await websockets.connect(url, max_size=None))

        levels: dict[str, int] = {}

        async def put(conn, key):
            reply = await conn.cache({"operation": "put", "value": VALUE,
                                      "key": {"namespace": "bench", "identifier": key}})
            return reply.get("success") is True and reply.get("status") == "ok"

        async def get(conn, key):
            reply = await conn.cache({"operation": "get",
                                      "key": {"namespace": "bench", "identifier": key}})
            level = reply.get("cache_level", reply.get("status"))
            levels[level] = levels.get(level, 0) + 1
            return reply.get("status") == "hit" and (reply.get("entry") or {}).get("value") == VALUE

        def notes():
            text = ", ".join(f"{k} {v}" for k, v in sorted(levels.items()))
            levels.clear()
            return text

        return await put_then_get(connect, put, get, notes)
    finally:
        proc.terminate()
        proc.wait()


# ---- Redis -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bench_redis(tmp: str, appendfsync: str) -> list[tuple]:
    import redis.asyncio as aioredis  # here, so other scripts can import the harness

    name = f"redis-{appendfsync}"
    store = os.path.join(tmp, name)
    os.makedirs(store)
    port = free_port()
    log = open(os.path.join(tmp, f"{name}.log"), "wb")
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", store, "--save", "", "--appendonly", "yes",
                             "--appendfsync", appendfsync, "--daemonize", "no",
                             "--maxclients", "1000"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)

        class RedisConn:
            def __init__(self):
                self.r = aioredis.Redis(host="127.0.0.1", port=port)

            async def close(self):
                await self.r.aclose()

        async def connect():
            return RedisConn()

        async def put(conn, key):
            return await conn.r.set(key, VALUE) is True

        async def get(conn, key):
            return await conn.r.get(key) == VALUE.encode()

        return await put_then_get(connect, put, get)
    finally:
        proc.terminate()
        proc.wait()


# ---- main --------------------------------------------------------------------

async def main() -> None:
    tmp = tempfile.mkdtemp(prefix="cache-vs-redis-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    try:
        runs = [
            ("mpreg cache (fsync per commit)", lambda: bench_mpreg(tmp)),
            ("Redis AOF, appendfsync always", lambda: bench_redis(tmp, "always")),
            ("Redis AOF, appendfsync everysec (NOT fsync per write)",
             lambda: bench_redis(tmp, "everysec")),
        ]
        print(f"T = {SECONDS:g} s per phase, load avg {os.getloadavg()[0]:.2f}, "
              f"{os.cpu_count()} CPUs, value {len(VALUE)} bytes, data in {tmp}")
        print("| system | op | clients | ops/s | p50 ms | p99 ms | client CPU µs/op | errors | notes |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for label, run in runs:
            for op, n, r, note in await run():
                print(f"| {label} | {op} | {n} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {r['client_cpu_us']:.0f} | {r['errors']} | {note} |",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
