"""conveyor's benchmark suite: conveyor and its peers side by side, in one run.

    python benchmarks/bench.py            # W1-W3 (3 repetitions), 1M-item scale, restart
    python benchmarks/bench.py --quick    # a smoke run: 1 repetition, smaller workloads

Needs root (or the tools already installed): installs nginx, aria2, wget and curl from
Debian packages when missing, starts nginx on 127.0.0.1, generates the data in a tmpfs
(``/dev/shm``), then runs every tool on every workload in alternating order, verifies every
output file's sha256, and writes ``benchmarks/results.json``, ``benchmarks/results.png``
and the results section of ``benchmarks/README.md``.

Measured per run: wall time, files/s and MB/s, CPU seconds of the tool and all its
processes (``RUSAGE_CHILDREN``), and peak RSS summed over the tool's process tree
(sampled every 10 ms with psutil). Medians over the repetitions.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
START, END = "<!-- results:start -->", "<!-- results:end -->"


# -- workloads and data ------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    title: str
    count: int
    size: int
    parallel: int = 16
    delay: float = 0.0  # seconds the server waits before each response
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256

    @property
    def total(self) -> int:
        return self.count * self.size


def generate(data: Path, w: Workload) -> None:
    folder = data / w.name
    folder.mkdir(parents=True)
    block = os.urandom(min(w.size, 4 * MiB))
    for i in range(w.count):
        name = f"f{i:05d}.bin"
        digest = hashlib.sha256()
        with (folder / name).open("wb") as fh:
            left, salt = w.size, i.to_bytes(8, "big")
            first = True
            while left:
                piece = (salt + block[8:]) if first else block
                piece = piece[: min(left, len(piece))]
                fh.write(piece)
                digest.update(piece)
                left -= len(piece)
                first = False
        w.files[name] = digest.hexdigest()


def verify(out: Path, w: Workload) -> str | None:
    for name, expected in w.files.items():
        path = out / name
        if not path.is_file():
            return f"{name} missing"
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(4 * MiB):
                digest.update(chunk)
        if digest.hexdigest() != expected:
            return f"{name} differs"
    return None


# -- nginx -------------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [p for p, b in (("nginx", "nginx"), ("aria2", "aria2c"), ("wget", "wget"),
                              ("curl", "curl")) if shutil.which(b) is None and not
               Path("/usr/sbin", b).exists()]  # fmt: skip
    if not Path("/usr/lib/nginx/modules/ngx_http_echo_module.so").exists():
        missing.append("libnginx-mod-http-echo")
    if missing:
        print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_nginx(work: Path, data: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = work / "nginx.conf"
    module = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
    echo = f"load_module {module};\n" if module.exists() else ""
    # W4: every response waits 50 ms before its first byte, as from a far-away server.
    delayed = ("location /W4/ { echo_sleep 0.05; echo_exec @file; }\n"
               "        location @file { }") if echo else ""  # fmt: skip
    conf.write_text(
        f"""{echo}daemon off;
worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {data};
        {delayed}
    }}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start; see nginx-error.log")


# -- measuring one run -------------------------------------------------------------------


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def measure(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    ps = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(ps))
            stop.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "pid": proc.pid,
        "wall": wall,
        "cpu": cpu,
        "rss": peak[0],
        "code": proc.returncode,
        "stdout": out.decode(errors="replace")[-2000:],
        "stderr": err.decode(errors="replace")[-2000:],
    }


def stages(log: Path, total: float, main_pid: int | None) -> dict[str, float]:
    """CPU seconds per stage of a conveyor run, from its ``CONVEYOR_CPU_LOG`` lines.

    Actor threads record their own CPU time as they stop; worker processes record their
    total. What no thread claims is "main": the main thread (start-up imports, the CLI,
    the display), the supervisor, the ticker and the pipes' reader threads.
    """
    by_stage: dict[str, float] = {}
    threads_of: dict[int, float] = {}
    processes: dict[int, float] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec["stage"].endswith("_process"):
            processes[rec["pid"]] = processes.get(rec["pid"], 0.0) + rec["cpu"]
            continue
        by_stage[rec["stage"]] = by_stage.get(rec["stage"], 0.0) + rec["cpu"]
        threads_of[rec["pid"]] = threads_of.get(rec["pid"], 0.0) + rec["cpu"]
    for pid, cpu in processes.items():
        by_stage["worker processes (rest)"] = (
            by_stage.get("worker processes (rest)", 0.0) + cpu - threads_of.get(pid, 0.0)
        )
    main = total - sum(processes.values()) - threads_of.get(main_pid or -1, 0.0)
    by_stage["main (start-up, CLI, supervisor)"] = main
    return by_stage


# -- the tools ---------------------------------------------------------------------------


@dataclass
class Tool:
    name: str
    build: Callable[[Workload, str, Path, Path], list[str]]  # (w, base url, out, work)
    verify: bool = True
    workloads: tuple[str, ...] = ("W1", "W2", "W3")


def _urls(w: Workload, base: str) -> list[str]:
    return [f"{base}/{w.name}/{name}" for name in w.files]


def curl_parallel(w: Workload, base: str, out: Path, work: Path) -> list[str]:
    cfg = work / f"curl-{w.name}.cfg"
    cfg.write_text("".join(f'url = "{u}"\noutput = "{out}/{u.rsplit("/", 1)[1]}"\n'
                           for u in _urls(w, base)))  # fmt: skip
    return ["curl", "--parallel", "--parallel-max", str(w.parallel), "--silent",
            "--show-error", "--fail", "-K", str(cfg)]  # fmt: skip


def curl_devnull(w: Workload, base: str, out: Path, work: Path) -> list[str]:
    (url,) = _urls(w, base)
    return ["curl", "--silent", "--show-error", "--fail", "-o", "/dev/null", url]


def aria2(w: Workload, base: str, out: Path, work: Path) -> list[str]:
    lst = work / f"aria2-{w.name}.txt"
    lst.write_text("".join(f"{u}\n  out={u.rsplit('/', 1)[1]}\n" for u in _urls(w, base)))
    return ["aria2c", "-j", str(w.parallel), "-x", "1", "-s", "1", "--dir", str(out),
            "-i", str(lst),
            "--console-log-level=error", "--summary-interval=0", "--download-result=hide",
            "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
            "--max-connection-per-server=16", "-q"]  # fmt: skip


def wget(w: Workload, base: str, out: Path, work: Path) -> list[str]:
    lst = work / f"wget-{w.name}.txt"
    lst.write_text("\n".join(_urls(w, base)) + "\n")
    return ["wget", "-q", "-nd", "-P", str(out), "-i", str(lst)]


def threadpool(w: Workload, base: str, out: Path, work: Path) -> list[str]:
    lst = work / f"tp-{w.name}.txt"
    lst.write_text("\n".join(_urls(w, base)) + "\n")
    return [sys.executable, str(HERE / "threadpool_baseline.py"), str(lst), str(out), "16"]


def conveyor_tool(
    processes: int, engine: str = "curl"
) -> Callable[[Workload, str, Path, Path], list[str]]:
    """conveyor as a new user runs it: the defaults, with ``per_host = 16`` (W1-W3) or
    ``download.concurrency = 300`` and no per-host limit (W4)."""

    def build(w: Workload, base: str, out: Path, work: Path) -> list[str]:
        tag = f"conveyor-{engine}-p{processes}-{w.name}"
        lst = work / f"{tag}.ndjson"
        lst.write_text("".join(json.dumps({"id": n, "url": u, "name": n}) + "\n"
                               for n, u in zip(w.files, _urls(w, base), strict=True)))  # fmt: skip
        state = work / f"{tag}-state"
        shutil.rmtree(state, ignore_errors=True)
        download = f'engine = "{engine}"\n'
        if w.parallel > 16:
            if "concurrency" in _config_keys():
                download += f"concurrency = {w.parallel}\nper_host = 0\n"
            else:  # before download.concurrency existed: its best setting
                download += f"mailbox = {w.parallel // 2}\nper_host = 0\n"
        else:
            download += "per_host = 16\n"
        cfg = work / f"{tag}.toml"
        cfg.write_text(
            f'[input]\npath = "{lst}"\n[output]\ndir = "{out}"\n[state]\ndir = "{state}"\n'
            f"[download]\n{download}"
            + (f"processes = {processes}\n" if processes else "")
            + '[log]\nlevel = "warning"\n'
        )
        return [sys.executable, "-m", "runtime", "run", str(cfg), "--log-format", "json"]

    return build


def tools(with_processes: bool) -> list[Tool]:
    found = [
        Tool("conveyor curl", conveyor_tool(0, "curl"), workloads=("W1", "W2", "W3", "W4")),
        Tool("conveyor requests", conveyor_tool(0, "requests")),
        Tool("curl --parallel", curl_parallel, workloads=("W1", "W2", "W3", "W4")),
        Tool("aria2c", aria2, workloads=("W1", "W2", "W3", "W4")),
        Tool("wget", wget),
        Tool("ThreadPool+requests", threadpool),
        Tool("curl -o /dev/null", curl_devnull, verify=False, workloads=("W3",)),
    ]
    if with_processes:
        found.insert(2, Tool("conveyor requests processes=2", conveyor_tool(2)))
    return found


# -- the run -----------------------------------------------------------------------------


def run_workloads(
    workloads: list[Workload], base: str, work: Path, reps: int, all_tools: list[Tool]
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for w in workloads:
        chosen = [t for t in all_tools if w.name in t.workloads]
        runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in chosen}
        for rep in range(reps):
            order = chosen[rep % len(chosen) :] + chosen[: rep % len(chosen)]
            for tool in order:
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                argv = tool.build(w, base, out, work)
                cpu_log = work / "cpu.jsonl"
                cpu_log.unlink(missing_ok=True)
                env = dict(os.environ, CONVEYOR_CPU_LOG=str(cpu_log))
                env.pop("PYTHONDONTWRITEBYTECODE", None)  # start-up as users have it
                m = measure(argv, ROOT, env)
                m["stages"] = stages(cpu_log, m["cpu"], m.get("pid")) if cpu_log.exists() else {}
                m["error"] = (f"exit {m['code']}: {m['stderr'][-300:]}" if m["code"] else
                              (verify(out, w) if tool.verify else None))  # fmt: skip
                runs[tool.name].append(m)
                status = m["error"] or "ok"
                print(f"{w.name} rep {rep + 1} {tool.name:<22} {m['wall']:8.3f} s "
                      f"{m['rss'] / MiB:7.1f} MiB {m['cpu']:6.2f} cpu-s  {status}",
                      file=sys.stderr, flush=True)  # fmt: skip
                shutil.rmtree(out, ignore_errors=True)
        table = {}
        for name, ms in runs.items():
            good = [m for m in ms if not m["error"]]
            if not good:
                table[name] = {"error": ms[0]["error"]}
                continue
            wall = statistics.median(m["wall"] for m in good)
            table[name] = {
                "wall_s": wall,
                "files_per_s": w.count / wall,
                "mb_per_s": w.total / 1e6 / wall,
                "rss_mib": statistics.median(m["rss"] for m in good) / MiB,
                "cpu_s": statistics.median(m["cpu"] for m in good),
                "runs": len(good),
                "cpu_us_per_file": statistics.median(m["cpu"] for m in good) / w.count * 1e6,
                "stages_us_per_file": {
                    k: statistics.median(m["stages"].get(k, 0.0) for m in good) / w.count * 1e6
                    for k in sorted({k for m in good for k in m["stages"]})
                },
                "failed_runs": len(ms) - len(good),
            }
        results[w.name] = {"title": w.title, "count": w.count, "size": w.size, "tools": table}
    return results


def run_scale(work: Path, items: int, limit: float) -> dict[str, Any]:
    folder = work / "scale"
    folder.mkdir()
    lst = folder / "items.ndjson"
    with lst.open("w") as fh:
        for i in range(items):
            fh.write(f'{{"url": "http://sim{i % 97}.test/d/{i}.bin"}}\n')
    cfg = folder / "scale.toml"
    cfg.write_text(
        f'[input]\npath = "{lst}"\n[output]\ndir = "{folder}/out"\n'
        f'[state]\ndir = "{folder}/state"\n'
        "[download]\nworkers = 16\nmailbox = 8\nper_host = 0\nprocesses = 2\n"
        '[processing]\nprocessor = "runtime.plugins:NullProcessor"\n'
        '[simulate]\nmin_size = 64\nmax_size = 64\n[log]\nlevel = "warning"\n'
    )
    argv = [sys.executable, str(HERE / "scale.py"), "one", str(cfg), "--limit", str(limit)]
    first = measure(argv, ROOT)
    second = measure([*argv[:-1], "20"], ROOT)  # the restart: a state of `items` items
    out = {}
    for key, m in (("first_run", first), ("restart", second)):
        line = m["stdout"].strip().splitlines()[-1] if m["stdout"].strip() else "{}"
        out[key] = {**json.loads(line), "rss_mib": m["rss"] / MiB, "cpu_s": m["cpu"],
                    "wall_s": m["wall"], "code": m["code"]}  # fmt: skip
        if m["code"] not in (0, 1, 130):
            out[key]["error"] = m["stderr"][-500:]
    out["items"] = items
    return out


# -- reporting ---------------------------------------------------------------------------


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"Run of {meta['date']} on {meta['machine']} — {meta['reps']} repetition(s), medians; "
        "data and outputs in tmpfs; server nginx on 127.0.0.1. Ratios are to the fastest "
        "tool of the same workload in this run.",
        "",
    ]
    for key, r in results.items():
        if key == "scale":
            continue
        lines += [f"### {key}: {r['title']}", "",
                  "| tool | files/s | MB/s | peak RSS (MiB, all processes) | CPU s "
                  "| CPU µs per file | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        best = max((t["files_per_s"] for t in r["tools"].values() if "error" not in t),
                   default=1.0)  # fmt: skip
        for name, t in sorted(r["tools"].items(),
                              key=lambda kv: -kv[1].get("files_per_s", 0)):  # fmt: skip
            if "error" in t:
                error = " ".join(str(t["error"]).split()).replace("|", "/")[:160]
                lines.append(f"| {name} | failed: {error} | | | | | |")
                continue
            lines.append(f"| {name} | {t['files_per_s']:,.0f} | {t['mb_per_s']:,.0f} | "
                         f"{t['rss_mib']:,.1f} | {t['cpu_s']:.2f} | "
                         f"{t['cpu_us_per_file']:,.0f} | "
                         f"{t['files_per_s'] / best:.2f} |")  # fmt: skip
        lines.append("")
        staged = {n: t for n, t in r["tools"].items() if t.get("stages_us_per_file")}
        if staged:
            names = sorted({k for t in staged.values() for k in t["stages_us_per_file"]})
            lines += [f"CPU µs per file by stage ({key}; threads' own CPU time, medians):", "",
                      "| tool | " + " | ".join(names) + " |",
                      "|---|" + "---:|" * len(names)]  # fmt: skip
            for n, t in staged.items():
                cells = [f"{t['stages_us_per_file'].get(k, 0):,.0f}" for k in names]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            lines.append("")
    if "scale" in results:
        s = results["scale"]
        f, r = s["first_run"], s["restart"]
        lines += [f"### Scale: {s['items']:,} items, simulated transport, persistence on", "",
                  "| run | first grant (s) | items/s | terminal items | peak RSS (MiB) |",
                  "|---|---:|---:|---:|---:|",
                  f"| first run | {f.get('first_grant_s') or 0:.2f} | "
                  f"{f.get('items_per_s', 0):,.0f} | {f.get('terminal', 0):,} | "
                  f"{f['rss_mib']:.1f} |",
                  f"| restart on that state | {r.get('first_grant_s') or 0:.2f} | "
                  f"{r.get('items_per_s', 0):,.0f} | {r.get('terminal', 0):,} | "
                  f"{r['rss_mib']:.1f} |", ""]  # fmt: skip
    lines.append("![results](results.png)")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in results if k != "scale"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        tools_ = {n: t for n, t in results[key]["tools"].items() if "error" not in t}
        metric = "files_per_s" if key == "W1" else "mb_per_s"
        names = sorted(tools_, key=lambda n: tools_[n][metric])
        colors = ["tab:orange" if n.startswith("conveyor") else "tab:gray" for n in names]
        ax.barh(names, [tools_[n][metric] for n in names], color=colors)
        ax.set_title(f"{key}: {results[key]['title']}")
        ax.set_xlabel("files/s" if metric == "files_per_s" else "MB/s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_readme(section: str) -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = f"{head}{START}\n{section}\n{END}{tail}"
    else:
        text += f"\n{START}\n{section}\n{END}\n"
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description="conveyor benchmarks against its peers")
    parser.add_argument("--quick", action="store_true", help="1 repetition, small data")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--only", default="W1,W2,W3,W4,scale", help="comma-separated subset")
    parser.add_argument("--tools", default="", help="comma-separated name prefixes of the "
                        "tools to run (default: all)")  # fmt: skip
    parser.add_argument("--scale-items", type=int, default=None)
    parser.add_argument("--scale-limit", type=float, default=120.0,
                        help="stop the first scale run after this many seconds")  # fmt: skip
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    only = set(args.only.split(","))
    ensure_tools()
    base_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-", dir=base_dir))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    data = work / "data"
    workloads = [
        Workload("W1", "5,000 files x 16 KiB", 500 if args.quick else 5000, 16 * KiB),
        Workload("W2", "200 files x 1 MiB", 50 if args.quick else 200, MiB),
        Workload("W3", "1 file x 1 GiB", 1, (256 * MiB) if args.quick else GiB),
        Workload(
            "W4",
            "20,000 files x 16 KiB, 50 ms before each response, 300 at once",
            2000 if args.quick else 20000,
            16 * KiB,
            parallel=300,
            delay=0.05,
        ),
    ]
    workloads = [w for w in workloads if w.name in only]
    if args.quick:
        for w in workloads:
            w.title += " (quick: scaled down)"
    nginx = None
    try:
        for w in workloads:
            generate(data, w)
        results: dict[str, Any] = {}
        if workloads:
            nginx, port = start_nginx(work, data)
            with_processes = "processes" in _config_keys()
            chosen = [t for t in tools(with_processes) if not args.tools
                      or any(t.name.startswith(p) for p in args.tools.split(","))]  # fmt: skip
            results = run_workloads(workloads, f"http://127.0.0.1:{port}", work, reps,
                                    chosen)  # fmt: skip
        if "scale" in only:
            items = args.scale_items or (100_000 if args.quick else 1_000_000)
            results["scale"] = run_scale(work, items, args.scale_limit)
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "reps": reps,
    }
    (HERE / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=2) + "\n")
    if any(k != "scale" for k in results):
        chart(results, HERE / "results.png")
    section = markdown(results, meta)
    print(section)
    if not args.no_readme:
        write_readme(section)


def _config_keys() -> set[str]:
    from runtime.core.config import DownloadConfig

    return set(DownloadConfig.__dataclass_fields__)


if __name__ == "__main__":
    main()
