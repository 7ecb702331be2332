"""Replicated writes on 3 local nodes: an mpreg cluster vs a 3-member etcd.

    apt-get install -y etcd-server
    pip install aiohttp websockets
    cargo build --release -p mpreg-daemon      # from the repository root
    python3 benches-compare/cluster_vs_etcd.py

Both clusters have 3 members on 127.0.0.1, each with its own data dir on the
same disk; a write is acknowledged once a majority (2 of 3) has it in an
fsynced log: mpreg fsyncs the RocksDB WAL before it acknowledges an append,
etcd fsyncs its WAL (always; etcd has no setting to skip it).

Both are driven by the SAME client loop (`measure`, shared with
cache_vs_redis.py): N writers (1, 16,
256) over up to 16 connections; each writer sends one put and awaits its
reply before the next, for T seconds; keys `k<i>` (i = a shared counter
modulo 100,000), 100-byte values. All writes go to the leader. Only the
"do one put" differs:

- mpreg: a `cache-request` put over WebSocket (replies matched by `u`, so
  several writers share a connection with requests pipelined);
- etcd: `POST /v3/kv/put` on its gRPC gateway (JSON, base64 key and value),
  through an aiohttp session per "connection" whose pool opens one HTTP/1.1
  socket per request in flight.

Client CPU per operation (this Python process) is reported: on a 2-core
machine the client and the 3 servers share the CPUs, for both alike.
Environment: BENCH_SECONDS (default 5), MPREG_DAEMON (default
target/release/mpreg-daemon of this repository), ETCD (default `etcd` on PATH).
"""

import asyncio
import base64
import itertools
import os
import shutil
import subprocess
import tempfile

import aiohttp
import websockets

from cache_vs_redis import MpregConn, free_port, measure

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WRITERS = (1, 16, 256)
KEYSPACE = 100_000
VALUE = "v" * 100
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPREG_DAEMON = os.environ.get(
    "MPREG_DAEMON", os.path.join(REPO, "target", "release", "mpreg-daemon")
)
ETCD = os.environ.get("ETCD") or shutil.which("etcd")


async def run_writers(connect, put) -> list[tuple]:
    """The shared writer loop (`measure` of cache_vs_redis.py) per N."""
    counter = itertools.count()
    return [(n, await measure(connect, put, n, lambda: f"k{next(counter) % KEYSPACE}"))
            for n in WRITERS]


# ---- mpreg -------------------------------------------------------------------

async def http_json(url: str):
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            return response.status, await response.json()


async def bench_mpreg(tmp: str) -> list[tuple]:
    ports = [(free_port(), free_port()) for _ in range(3)]
    procs = []
    try:
        for i, (port, admin) in enumerate(ports):
            args = [MPREG_DAEMON, "--data-dir", os.path.join(tmp, f"mpreg{i}"), "--node-id", f"n{i}",
                    "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                    "--log", "warn"]
            if i > 0:
                args += ["--join", f"ws://127.0.0.1:{ports[0][0]}"]
            log = open(os.path.join(tmp, f"mpreg{i}.log"), "wb")
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            for _ in range(600):
                try:
                    code, _ = await http_json(f"http://127.0.0.1:{admin}/health")
                    if code == 200:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        leader = None
        for port, admin in ports:
            _, status = await http_json(f"http://127.0.0.1:{admin}/status")
            if status["role"] == "leader":
                leader = port
        url = f"ws://127.0.0.1:{leader}"

        async def connect():
            return MpregConn(await websockets.connect(url, max_size=None))

        async def put(conn, key):
            reply = await conn.cache({"operation": "put", "value": VALUE,
                                      "key": {"namespace": "bench", "identifier": key}})
            return reply.get("status") == "ok"

        return await run_writers(connect, put)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


# ---- etcd --------------------------------------------------------------------

class EtcdConn:
    def __init__(self, url):
        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def put(self, key: str) -> bool:
        body = {"key": base64.b64encode(key.encode()).decode(),
                "value": base64.b64encode(VALUE.encode()).decode()}
        async with self.session.post(f"{self.url}/v3/kv/put", json=body) as response:
            reply = await response.json()
            return response.status == 200 and "header" in reply

    async def close(self):
        await self.session.close()


async def bench_etcd(tmp: str) -> list[tuple]:
    members = [(f"e{i}", free_port(), free_port()) for i in range(3)]
    cluster = ",".join(f"{name}=http://127.0.0.1:{peer}" for name, _, peer in members)
    procs = []
    try:
        for name, client, peer in members:
            args = [ETCD, "--name", name, "--data-dir", os.path.join(tmp, name),
                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", "bench", "--log-level", "warn"]
            log = open(os.path.join(tmp, f"{name}.log"), "wb")
            procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
        leader = None
        for _ in range(600):
            for _, client, _ in members:
                try:
                    async with aiohttp.ClientSession() as session:
                        async with session.post(f"http://127.0.0.1:{client}/v3/maintenance/status",
                                                json={}) as response:
                            status = await response.json()
                    if status.get("leader") and status.get("leader") == status["header"]["member_id"]:
                        leader = client
                except (aiohttp.ClientError, KeyError):
                    pass
            if leader:
                break
            await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{leader}"

        async def connect():
            return EtcdConn(url)

        async def put(conn, key):
            return await conn.put(key)

        return await run_writers(connect, put)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()


async def main() -> None:
    tmp = tempfile.mkdtemp(prefix="cluster-vs-etcd-")
    try:
        print(f"T = {SECONDS:g} s per case, load avg {os.getloadavg()[0]:.2f}, "
              f"{os.cpu_count()} CPUs, value {len(VALUE)} bytes")
        print("| system | writers | writes/s | p50 ms | p99 ms | client CPU µs/op | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, run in [("mpreg 3 nodes", bench_mpreg), ("etcd 3.4 3 members", bench_etcd)]:
            for n, r in await run(tmp):
                print(f"| {label} | {n} | {r['ops_per_s']:,.0f} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {r['client_cpu_us']:.0f} | {r['errors']} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
