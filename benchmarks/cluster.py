"""The cluster benchmark: one coordinator, 1, 2 and 4 nodes as processes on this machine.

    python benchmarks/cluster.py                 # every measure
    python benchmarks/cluster.py --files 2000 --only scale

Needs root or the tools installed: nginx with the echo module (``libnginx-mod-http-echo``)
and ``redis-server``. Measures, printed as one markdown table:

- ``scale``: files/s with 1, 2 and 4 nodes against an origin that waits 50 ms before
  every response (W4's nginx ``echo_sleep``), each node ``download.concurrency = 32``,
  ``per_host = 0``; the coordinator does not download (``local_downloads = false``);
- ``coordinator``: items/s the coordinator grants and records (its own ceiling) with 4
  simulated nodes that speak the protocol and nothing else (``protocol_nodes``: one
  process answering every grant at once, 4 downloaders x 256 each), and its CPU per
  item; then Redis ``used_memory`` peak (sampled every 50 ms) over that batch, against the
  memory before it started (``--items 1000000`` for the issue's batch);
- ``workers``: the same with 4 real ``worker --simulate-downloads`` processes (simulated
  transfers, real downloader actors) sharing the machine's cores with the coordinator;
- ``failover``: seconds from ``kill -9`` of one of 2 nodes to its items being granted
  again (the coordinator's "worker lost" log line), with ``node_timeout = 2``.

Everything runs on this one machine (2 cores here): the nodes share its CPU, so the
scale-out measured is a floor of what separate machines would give.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import ROOT, Workload, ensure_tools, generate, start_nginx

sys.path.insert(0, str(ROOT))
from runtime.testing import RedisServer

PY = sys.executable


def write_coordinator(work: Path, tag: str, urls: list[str], redis_url: str,
                      extra: str = "") -> Path:  # fmt: skip
    lst = work / f"{tag}.ndjson"
    lst.write_text("".join(json.dumps({"url": u}) + "\n" for u in urls))
    shutil.rmtree(work / f"{tag}-state", ignore_errors=True)
    config = work / f"{tag}.toml"
    config.write_text(
        f'[input]\npath = "{lst}"\n[output]\ndir = "{work}/{tag}-out"\n'
        f'[state]\ndir = "{work}/{tag}-state"\n[download]\nper_host = 0\n'
        f'[log]\nlevel = "info"\n[cluster]\nredis = "{redis_url}"\nname = "{tag}"\n'
        f"local_downloads = false\n" + extra
    )
    return config


def start_nodes(work: Path, tag: str, redis_url: str, n: int, *extra: str) -> list[Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return [
        subprocess.Popen(
            [
                PY,
                "-m",
                "runtime",
                "worker",
                "--redis",
                redis_url,
                "--batch",
                tag,
                "--name",
                f"n{i}",
                "--output",
                str(work / f"{tag}-node{i}"),
                "--set",
                "download.concurrency=32",
                "--set",
                "download.per_host=0",
                "--log-format",
                "json",
                *extra,
            ],
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]


def run_coordinator(config: Path, work: Path) -> tuple[float, str]:
    """Run the coordinator to its end: its CPU seconds (the nodes, still running, are not
    counted: a child's time is added once it is waited for) and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([PY, "-m", "runtime", "run", str(config), "--quiet",
                           "--log-format", "json"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=3600)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"the coordinator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, done.stderr


def end_nodes(nodes: list[Any]) -> None:
    for node in nodes:
        try:
            node.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
            node.communicate()


def elapsed_of(stderr: str) -> float:
    """The run's own elapsed seconds (its "run finished" line), start-up excluded."""
    for line in reversed(stderr.splitlines()):
        if '"run finished"' in line:
            return float(json.loads(line)["elapsed"])
    raise SystemExit("no 'run finished' line")


def after_ingest(stderr: str, count: int) -> int | None:
    """Items/s from the end of ingest (the "input read" line) to the end of the run: the
    rate of granting and recording alone, once ingest no longer shares the time."""
    stamps: dict[str, tuple[float, dict[str, Any]]] = {}
    for line in stderr.splitlines():
        if '"input read"' in line or '"run finished"' in line:
            event = json.loads(line)
            when = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
            stamps[event["event"]] = (when.timestamp(), event)
    if len(stamps) < 2:
        return None
    (read_at, read), (end_at, _) = stamps["input read"], stamps["run finished"]
    left = count - read["ended"]
    return round(left / (end_at - read_at)) if left > count // 10 else None


def scale(work: Path, base: str, w: Workload, redis_url: str) -> dict[str, Any]:
    urls = [f"{base}/W4/{name}" for name in w.files]
    rates: dict[str, Any] = {}
    for n in (1, 2, 4):
        tag = f"scale{n}"
        config = write_coordinator(work, tag, urls, redis_url)
        nodes = start_nodes(work, tag, redis_url, n)
        _, err = run_coordinator(config, work)
        end_nodes(nodes)
        rates[f"{n} node{'s' if n > 1 else ''}"] = round(len(urls) / elapsed_of(err))
        print(f"  scale: {n} nodes, {rates[list(rates)[-1]]} files/s", file=sys.stderr)
    one = rates["1 node"]
    return {"files/s": rates, "4 nodes vs 1": round(rates["4 nodes"] / one, 2)}


def protocol_nodes(redis_url: str, batch: str, count: int, downloaders: int, mailbox: int) -> None:
    """``count`` simulated nodes in this one process, speaking the cluster's protocol and
    nothing else: each grant is answered at once (started, complete, demand), with no
    downloader, transfer or file. What is left to measure is the coordinator."""
    from messages import (
        BatchDone,
        Demand,
        DownloadComplete,
        DownloadStarted,
        Grant,
        NodeBeat,
        NodeHello,
        NodeLost,
        decode_batch,
        encode_batch,
    )
    from runtime.core.streams import StreamLink

    link = StreamLink.connect(redis_url, batch)
    names = [f"p{i}" for i in range(count)]
    read = dict.fromkeys(names, "0")
    for name in names:
        link.send_up(name, [NodeHello(node=name, address="simulated", downloaders=downloaders,
                                      mailbox=mailbox, output="/simulated")])  # fmt: skip
    digest = "0" * 64
    beat = time.monotonic()
    while True:
        reply = link.client.xread({link.down(n): read[n] for n in names}, count=1024, block=200)
        pipe = link.client.pipeline(transaction=False)
        for stream, entries in reply or ():
            node = stream.decode().rpartition(":")[2]
            out: list[Any] = []
            for raw_id, fields in entries:
                read[node] = raw_id.decode()
                for m in decode_batch(fields[b"f"]):
                    if isinstance(m, Grant):
                        w = m.worker
                        for i in m.items:
                            out.append(DownloadStarted(worker=w, item_id=i.id, url=i.url,
                                                       attempt=i.attempts))  # fmt: skip
                            out.append(DownloadComplete(worker=w, item=i, path=f"/s/{i.name}",
                                                        size=1024, sha256=digest))  # fmt: skip
                        out.append(Demand(worker=w, n=len(m.items)))
                    elif isinstance(m, BatchDone | NodeLost):
                        return
            if out:
                pipe.xadd(link.up, {"n": node, "f": encode_batch(out)})
        if time.monotonic() - beat >= 1.0:
            beat = time.monotonic()
            for name in names:
                pipe.xadd(
                    link.up, {"n": name, "f": encode_batch([NodeBeat(node=name, read=read[name])])}
                )
        pipe.execute()


def coordinator_and_redis(
    work: Path, redis: RedisServer, count: int, *, real_nodes: bool = False
) -> dict[str, Any]:
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    urls = [f"http://h{i % 50}.test/f{i}.bin" for i in range(count)]
    tag = "sim"
    config = write_coordinator(work, tag, urls, redis.url,
                               '[simulate]\nmin_size = 1024\nmax_size = 1024\n')  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if real_nodes:
        nodes = start_nodes(work, tag, redis.url, 4, "--simulate-downloads")
    else:
        nodes = [subprocess.Popen([PY, __file__, "--protocol-nodes", redis.url, tag], env=env)]
    before = int(client.info("memory")["used_memory"])
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], int(client.info("memory")["used_memory"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu, err = run_coordinator(config, work)
    stop.set()
    sampler.join()
    end_nodes(nodes)
    client.close()
    return {
        "items/s": round(count / elapsed_of(err)),
        "items/s once the input is read": after_ingest(err, count),
        "coordinator CPU per item µs": round(cpu / count * 1e6),
        "items": count,
        "redis used_memory peak MiB": round(peak[0] / 2**20, 1),
        "redis used_memory before MiB": round(before / 2**20, 1),
    }


def failover(work: Path, base: str, w: Workload, redis_url: str) -> dict[str, Any]:
    urls = [f"{base}/W4/{name}?copy={k}" for k in range(4) for name in w.files]
    tag = "failover"
    config = write_coordinator(work, tag, urls, redis_url, "node_timeout = 2.0\n")
    nodes = start_nodes(work, tag, redis_url, 2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    coordinator = subprocess.Popen([PY, "-m", "runtime", "run", str(config), "--quiet",
                                    "--log-format", "json"], cwd=work, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)  # fmt: skip
    time.sleep(2.0)  # (a benchmark, not a test: let the batch get going)
    killed_at = time.time()
    nodes[0].send_signal(signal.SIGKILL)
    _, err = coordinator.communicate(timeout=3600)
    end_nodes(nodes)
    for line in err.splitlines():
        if "worker lost" in line:
            stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
            return {
                "seconds to flowing again": round(
                    datetime.fromisoformat(stamp).timestamp() - killed_at, 2
                ),
                "node_timeout": 2.0,
            }
    return {"seconds to flowing again": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=12000, help="files of the scale runs")
    parser.add_argument("--items", type=int, default=100_000, help="items of the simulated run")
    parser.add_argument("--only", default="", help="scale, coordinator, workers, failover")
    parser.add_argument(
        "--protocol-nodes", nargs=2, metavar=("REDIS", "BATCH"), help=argparse.SUPPRESS
    )  # (the coordinator measure's simulated nodes)
    args = parser.parse_args()
    if args.protocol_nodes:
        protocol_nodes(*args.protocol_nodes, count=4, downloaders=4, mailbox=256)
        return
    only = (
        set(args.only.split(",")) if args.only else {"scale", "coordinator", "workers", "failover"}
    )
    ensure_tools()
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="conveyor-cluster-", dir=shm if shm.is_dir() else None))
    root.chmod(0o755)  # nginx's workers run as an unprivileged user
    results: dict[str, Any] = {}
    try:
        data, work = root / "data", root / "work"
        data.mkdir()
        work.mkdir()
        w = Workload("W4", "W4", args.files, 16 * 1024, parallel=32, delay=0.05)
        generate(data, w)
        nginx, port = start_nginx(work, data)
        base = f"http://127.0.0.1:{port}"
        try:
            with RedisServer() as redis:
                if "scale" in only:
                    results["scale"] = scale(work, base, w, redis.url)
                if "coordinator" in only:
                    results["coordinator"] = coordinator_and_redis(work, redis, args.items)
                if "workers" in only:
                    results["workers"] = coordinator_and_redis(
                        work, redis, min(args.items, 100_000), real_nodes=True
                    )
                if "failover" in only:
                    results["failover"] = failover(work, base, w, redis.url)
        finally:
            nginx.terminate()
            nginx.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
