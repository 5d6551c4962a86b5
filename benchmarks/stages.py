"""What the optional stages cost: CPU per file with and without a pre-processor, extra
entry fields, a download-pipeline-processor-style plugin and ``output.keep = "none"``.

    python benchmarks/stages.py                      # 5,000 files x 16 KiB, 5 rounds
    python benchmarks/stages.py --base ../conveyor-old --rounds 3

Serves W1's files (``bench.py``: 5,000 x 16 KiB from nginx on 127.0.0.1) and runs
conveyor from the command line once per variant per round, the variants alternated in
every round (the machine's noise hits them alike). CPU per file is the run's process
and thread CPU time (``RUSAGE_CHILDREN``) over the files; the table gives each variant's
median and its range. ``--base DIR`` adds the ``plain`` run of another checkout (the
commit before a change) to compare against.

Variants (all W1's settings: the defaults with ``per_host = 16``):

- ``plain``: entries of ``url``, ``id``, ``name``; no processor (the stage is skipped);
- ``fields``: the same entries with three more keys each (kept and handed on);
- ``processor``: a conveyor processor that returns ``{}``;
- ``pre+processor``: the same with a pre-processor that returns its file;
- ``dpp processor``: a processor written for download-pipeline-processor (``FileData``);
- ``keep none``: ``plain`` with ``output.keep = "none"`` (every file deleted once
  committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import ROOT, Workload, generate, measure, start_nginx

HERE = Path(__file__).resolve().parent

PLUGINS = """
from typing import Any

from runtime.plugins import BasePreProcessor, BaseProcessor, Downloaded


class Noop(BaseProcessor):
    def process(self, downloaded: Downloaded) -> dict[str, Any]:
        return {}


class NoopPre(BasePreProcessor):
    def pre_process(self, downloaded: Downloaded) -> Downloaded:
        return downloaded


class DuckNoop:
    def __init__(self, debug: bool = False) -> None:
        self.debug = debug

    def process(self, file_data: Any) -> Any:
        return None
"""

VARIANTS: dict[str, tuple[bool, str]] = {
    "plain": (False, ""),
    "fields": (True, ""),
    "processor": (False, '[processing]\nprocessor = "stage_plugins:Noop"\n'),
    "pre+processor": (
        False,
        '[processing]\nprocessor = "stage_plugins:Noop"\npre_processor = "stage_plugins:NoopPre"\n',
    ),
    "dpp processor": (False, '[processing]\nprocessor = "stage_plugins:DuckNoop"\n'),
    "keep none": (False, '[output]\nkeep = "none"\n'),
}


def write_config(
    work: Path, tag: str, w: Workload, base: str, fields: bool, extra: str, out: Path
) -> Path:
    """The list and the config of one variant (its state starts empty)."""
    lst = work / f"{tag}.ndjson"
    with lst.open("w") as fh:
        for i, name in enumerate(w.files):
            entry: dict[str, Any] = {"id": name, "url": f"{base}/{w.name}/{name}", "name": name}
            if fields:
                entry.update(speaker=f"s{i % 97}", take=i, lang="en")
            fh.write(json.dumps(entry) + "\n")
    state = work / f"{tag}-state"
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    cfg = work / f"{tag}.toml"
    sections = {"output": f'dir = "{out}"\n', "processing": ""}
    for block in extra.split("[")[1:]:
        name, _, body = block.partition("]\n")
        sections[name] = sections.get(name, "") + body
    cfg.write_text(
        f'[input]\npath = "{lst}"\n[state]\ndir = "{state}"\n[download]\nper_host = 16\n'
        '[log]\nlevel = "warning"\n'
        + "".join(f"[{name}]\n{body}" for name, body in sections.items())
    )
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--base", type=Path, help="another checkout whose plain run to add")
    parser.add_argument("--only", default="", help="comma-separated variants")
    args = parser.parse_args()
    variants = [v for v in VARIANTS if not args.only or v in args.only.split(",")]
    shm = Path("/dev/shm")
    root = Path(tempfile.mkdtemp(prefix="conveyor-stages-", dir=shm if shm.is_dir() else None))
    root.chmod(0o755)  # nginx's workers run as an unprivileged user
    try:
        data, work = root / "data", root / "work"
        data.mkdir()
        work.mkdir()
        (work / "stage_plugins.py").write_text(PLUGINS)
        w = Workload("W1", "W1", args.files, 16 * 1024)
        generate(data, w)
        nginx, port = start_nginx(work, data)
        base = f"http://127.0.0.1:{port}"
        runs: dict[str, list[float]] = {}
        try:
            for _ in range(args.rounds):
                todo = [(v, ROOT) for v in variants]
                if args.base is not None:
                    todo.append(("plain (base)", args.base.resolve()))
                for name, checkout in todo:
                    fields, extra = VARIANTS[name.removesuffix(" (base)")]
                    tag = name.replace(" ", "-").replace("+", "-").replace("(", "").replace(")", "")
                    out = work / f"{tag}-out"
                    cfg = write_config(work, tag, w, base, fields, extra, out)
                    env = {**os.environ, "PYTHONPATH": f"{checkout}{os.pathsep}{work}"}
                    argv = [sys.executable, "-m", "runtime", "run", str(cfg), "--quiet"]
                    result = measure(argv, checkout, env)
                    if result["code"] != 0:
                        raise SystemExit(f"{name}: exit {result['code']}\n{result['stdout']}")
                    runs.setdefault(name, []).append(result["cpu"] / w.count * 1e6)
        finally:
            nginx.terminate()
            nginx.wait()
        plain = statistics.median(runs["plain"]) if "plain" in runs else None
        print(f"| variant ({args.files:,} files x 16 KiB, {args.rounds} rounds) "
              "| CPU per file, median | range | vs plain |")  # fmt: skip
        print("|---|--:|--:|--:|")
        for name, values in runs.items():
            median = statistics.median(values)
            ratio = f"{median / plain:.2f} ×" if plain else ""  # noqa: RUF001
            spread = f"{min(values):.0f}–{max(values):.0f}"  # noqa: RUF001
            print(f"| {name} | {median:.0f} µs | {spread} | {ratio} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
