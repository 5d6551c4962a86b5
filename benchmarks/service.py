"""The job service benchmark: how long a submit takes, and what the service costs over `run`.

    python benchmarks/service.py                 # 3 repetitions
    python benchmarks/service.py --repeat 1 --files 1000

1. ``POST /v1/jobs`` of 1,000, 10,000 and 100,000 items (urls the network guard refuses,
   so nothing is downloaded): the answer's latency, median of the repetitions. The batch
   is validated (the same check as ``run``'s input) and stored in the request.
2. The same ``--files`` files of 50 KB from a local file server (Python's
   ``ThreadingHTTPServer`` in a process of its own), downloaded once by
   ``python -m runtime run`` and once as a service job (submit to the ``completed``
   status seen on its event stream): wall seconds, median of the repetitions.

Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"  # noqa: S105 - a local benchmark's own token
SIZE = 50_000


def _start_serve(data: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "serve", "--port", "0", "--data-dir", str(data),
         "--set", "service.allow_networks=127.0.0.1/32", "--set", f"service.token={TOKEN}",
         "--log-format", "json"],
        cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    for line in process.stderr:
        if "listening on " in line:
            return process, line.split("listening on ")[1].split()[0]
    raise SystemExit("the service did not start")


def _file_server(folder: Path, files: int) -> tuple[subprocess.Popen[bytes], int]:
    www = folder / "www"
    www.mkdir()
    for i in range(files):
        (www / f"f{i}.bin").write_bytes(os.urandom(SIZE))
    code = (
        "import http.server, functools, sys\n"
        "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
        "h.func.log_message = lambda *a: None\n"
        "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(www)], stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def submit_latency(base: str, n: int) -> float:
    """Seconds for one POST of ``n`` items (the job is cancelled right after)."""
    items = [{"url": f"http://10.255.0.1/f{i}.bin"} for i in range(n)]
    body = json.dumps({"items": items})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    started = time.perf_counter()
    answer = requests.post(f"{base}/v1/jobs", data=body, headers=headers, timeout=600)
    seconds = time.perf_counter() - started
    assert answer.status_code == 202, answer.text
    job = answer.json()["job_id"]
    requests.post(f"{base}/v1/jobs/{job}/cancel", headers=headers, timeout=600)
    return seconds


def run_seconds(folder: Path, port: int, files: int, tag: str) -> float:
    """Wall seconds of ``python -m runtime run`` over the files."""
    listing = folder / f"run-{tag}.ndjson"
    listing.write_text("".join(json.dumps({"url": f"http://127.0.0.1:{port}/f{i}.bin?{tag}"})
                               + "\n" for i in range(files)))  # fmt: skip
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "runtime", "run", "--input", str(listing), "--output",
         str(folder / f"out-{tag}"), "--quiet"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def job_seconds(base: str, port: int, files: int, tag: str) -> float:
    """Wall seconds from submit to the job's ``completed`` event."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    items = [{"url": f"http://127.0.0.1:{port}/f{i}.bin?{tag}"} for i in range(files)]
    started = time.perf_counter()
    job = requests.post(f"{base}/v1/jobs", json={"items": items}, headers=headers,
                        timeout=600).json()["job_id"]  # fmt: skip
    with requests.get(f"{base}/v1/jobs/{job}/events", headers=headers, stream=True,
                      timeout=600) as stream:  # fmt: skip
        for line in stream.iter_lines():
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                if event["type"] == "status" and event["status"] == "completed":
                    break
    seconds = time.perf_counter() - started
    state = requests.get(f"{base}/v1/jobs/{job}", headers=headers, timeout=60).json()
    assert state["progress"]["completed"] == files, state
    return seconds


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        service, base = _start_serve(folder / "data")
        files, port = _file_server(folder, args.files)
        try:
            rows = []
            for n in (1_000, 10_000, 100_000):
                times = [submit_latency(base, n) for _ in range(args.repeat)]
                rows.append(
                    (f"POST /v1/jobs, {n:,} items", f"{statistics.median(times) * 1000:,.0f} ms")
                )
            runs = [run_seconds(folder, port, args.files, f"r{i}") for i in range(args.repeat)]
            jobs = [job_seconds(base, port, args.files, f"j{i}") for i in range(args.repeat)]
            r, j = statistics.median(runs), statistics.median(jobs)
            rows.append((f"`run`, {args.files:,} x 50 KB", f"{r:.2f} s"))
            rows.append((f"service job, {args.files:,} x 50 KB (submit → completed)", f"{j:.2f} s"))
            rows.append(("service job / `run`", f"{j / r:.2f}x"))
        finally:
            service.terminate()
            service.wait(60)
            files.terminate()
            files.wait(10)
    print("| measure | median |\n|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
