"""The naive baseline: ThreadPoolExecutor + requests, one Session per thread.

    python benchmarks/threadpool_baseline.py URLS_FILE OUT_DIR [THREADS]

What a hand-rolled downloader typically looks like: stream each url to a file, no retries,
no state, no verification beyond the status code.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

_local = threading.local()


def fetch(url: str, out: Path) -> None:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
    with session.get(url, stream=True, timeout=60) as response:
        response.raise_for_status()
        with (out / url.rsplit("/", 1)[-1]).open("wb") as fh:
            for chunk in response.iter_content(1 << 18):
                fh.write(chunk)


def main() -> None:
    urls = Path(sys.argv[1]).read_text().split()
    out = Path(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 16
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(fetch, url, out) for url in urls]:
            future.result()


if __name__ == "__main__":
    main()
