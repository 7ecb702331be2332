"""Federation convergence and log growth with real daemons on loopback.

    cargo build -p mpreg-daemon                 # or --release; see MPREG_DAEMON
    python3 benches-compare/federation_convergence.py

Starts N single-node clusters (each its own mpreg-daemon process, ports
picked by the daemons) linked in a TOPOLOGY: `line`, `ring`, or `mesh`
(a ring plus chords to a random cluster, degree about 3). Then it reports:

- start: seconds from the last daemon being ready until every cluster has
  an active route to every other (checked through /sql);
- steady log growth: events each cluster appends per hour with nothing
  changing (re-announcements every 10 s must not grow the log with them),
  measured over STEADY_SECONDS and scaled to an hour;
- cut: one cluster killed (kill -9); seconds until no cluster has an
  active route to it, and, for the ring and mesh, until every other pair
  is routed again (link_dead_seconds is 3, the route TTL 30).

Environment: CLUSTERS (default 10), TOPOLOGY (default ring), STEADY_SECONDS
(default 60), MPREG_DAEMON (default target/debug/mpreg-daemon of this
repository). Only 127.0.0.1 is used. Every cluster has one node, so on a
2-core machine this measures the control plane, not raft.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAEMON = os.environ.get("MPREG_DAEMON", os.path.join(ROOT, "target/debug/mpreg-daemon"))
N = int(os.environ.get("CLUSTERS", "10"))
TOPOLOGY = os.environ.get("TOPOLOGY", "ring")
STEADY = float(os.environ.get("STEADY_SECONDS", "60"))


def sql(admin, query):
    url = f"{admin}/sql?" + urllib.parse.urlencode({"q": query})
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def neighbours(i):
    """Clusters that cluster i dials with --federate (lower indexes only)."""
    if TOPOLOGY == "line":
        return [i - 1] if i > 0 else []
    ring = [i - 1] if i > 0 else []
    if i == N - 1 and N > 2:
        ring.append(0)
    if TOPOLOGY == "mesh" and i >= 2:
        chord = random.Random(i).randrange(0, i - 1)
        if chord not in ring:
            ring.append(chord)
    return ring


def start(tmp, i, federate):
    d = os.path.join(tmp, f"c{i}")
    os.makedirs(d, exist_ok=True)
    ready = os.path.join(d, "ready.json")
    args = [DAEMON, "--data-dir", os.path.join(d, "data"), "--cluster-id", f"c{i}",
            "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
            "--ready-file", ready, "--log", "warn"]
    if federate:
        args += ["--federate", ",".join(federate)]
    log = open(os.path.join(d, "daemon.log"), "w")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"c{i} did not start; see {log.name}")
        time.sleep(0.02)
    with open(ready) as f:
        return proc, json.load(f)


def active(admin, me):
    rows = sql(admin, f"SELECT dest FROM routes WHERE state='active' AND dest <> '{me}'")
    return {r["dest"] for r in rows}


def wait(what, check, timeout=120):
    started = time.time()
    while time.time() - started < timeout:
        if check():
            return time.time() - started
        # Each check is one SQL query per cluster: polling harder loads
        # the daemons being measured.
        time.sleep(0.25)
    sys.exit(f"{what}: not within {timeout} s")


def events(admin):
    return sql(admin, "SELECT count(*) AS n FROM events")[0]["n"]


def main():
    tmp = tempfile.mkdtemp(prefix="mpreg-federation-")
    procs, ready = [], []
    try:
        for i in range(N):
            proc, r = start(tmp, i, [ready[j]["client_url"] for j in neighbours(i)])
            procs.append(proc)
            ready.append(r)
        names = [f"c{i}" for i in range(N)]
        everyone = lambda alive: all(
            active(ready[i]["admin_url"], names[i]) == {names[j] for j in alive if j != i}
            for i in alive)
        alive = list(range(N))
        took = wait("start convergence", lambda: everyone(alive))
        print(f"{N} clusters, {TOPOLOGY}: every route active {took:.2f} s after the last start")

        before = [events(r["admin_url"]) for r in ready]
        first = sql(ready[0]["admin_url"], "SELECT max(index) AS i FROM events")[0]["i"]
        time.sleep(STEADY)
        after = [events(r["admin_url"]) for r in ready]
        growth = [(a - b) * 3600 / STEADY for a, b in zip(after, before)]
        print(f"steady log growth per cluster: mean {sum(growth) / N:.0f} events/hour, "
              f"max {max(growth):.0f} (over {STEADY:.0f} s)")
        kinds = sql(ready[0]["admin_url"],
                    f"SELECT kind, count(*) AS n FROM events WHERE index > {first} "
                    "GROUP BY kind ORDER BY n DESC")
        print("  c0's events in that time: " + ", ".join(f"{k['kind']} {k['n']}" for k in kinds))

        victim = N // 2
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        alive.remove(victim)
        cut = time.time()
        wait("withdrawal", lambda: all(
            names[victim] not in active(ready[i]["admin_url"], names[i]) for i in alive))
        print(f"c{victim} killed: no active route to it anywhere after {time.time() - cut:.2f} s")
        if TOPOLOGY != "line":
            wait("reroute", lambda: everyone(alive))
            print(f"every other pair routed again after {time.time() - cut:.2f} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
