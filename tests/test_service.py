"""The job service, end to end: the real server (uvicorn on 127.0.0.1, a free port, in a
subprocess) against a real file server started by the test."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import websockets.exceptions
import websockets.sync.client

from runtime.service.webhooks import TOLERANCE, verify_signature
from tests.service_helpers import (
    BODY_SIZE,
    SECRET,
    TIMEOUT,
    TOKEN,
    FileServer,
    Service,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("service")
    server = Service(write_config(folder, max_items=1000, max_body_bytes=1_000_000))
    try:
        yield server
    finally:
        assert server.stop() == 0


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    try:
        yield server
    finally:
        server.close()


def _final_progress(events: list[dict[str, Any]]) -> tuple[int, int, int]:
    last = [e for e in events if e["type"] == "progress"][-1]
    return last["completed"], last["failed"], last["total"]


def test_500_files_followed_over_sse_websocket_and_polling_agree(
    service: Service, files: FileServer
) -> None:
    """One job of 500 files: SSE, a WebSocket client and polling all see it complete with
    the same counts, and every item event exactly once, in sequence."""
    job = service.submit(files.items(500))
    assert job["status"] == "queued"
    assert job["total"] == 500
    job_id = job["job_id"]
    done = threading.Event()
    seen: dict[str, list[dict[str, Any]]] = {}

    def over_websocket() -> None:
        url = service.url(f"/v1/jobs/{job_id}/ws").replace("http://", "ws://")
        with websockets.sync.client.connect(
            url, additional_headers=service.headers, open_timeout=30
        ) as ws:
            seen["ws"] = [json.loads(m) for m in ws]  # until the server closes: job ended

    def by_polling() -> None:
        while not done.wait(0.1):  # until the SSE reader saw the end, then once more
            pass
        seen["poll"] = [service.call("GET", f"/v1/jobs/{job_id}").json()]

    threads = [threading.Thread(target=over_websocket), threading.Thread(target=by_polling)]
    for thread in threads:
        thread.start()
    seen["sse"] = list(service.events(job_id))
    done.set()
    for thread in threads:
        thread.join(TIMEOUT)
    polled = seen["poll"][0]
    assert polled["status"] == "completed"
    p = polled["progress"]
    assert (p["completed"], p["failed"], p["total"]) == (500, 0, 500)
    for name in ("sse", "ws"):
        events = seen[name]
        assert _final_progress(events) == (500, 0, 500), name
        items = [e["id"] for e in events if e["type"] == "item"]
        assert sorted(items) == sorted(str(i) for i in range(500)), name  # each exactly once
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs)), name
        tail = [(e["seq"], e["type"], e.get("status")) for e in events[-4:]]
        assert events[-1] == {**events[-1], "type": "status", "status": "completed"}, tail
    assert sum(files.counts.values()) == 500
    result = service.call("GET", f"/v1/jobs/{job_id}/result").json()
    assert len(result["files"]) == 500
    first = service.call("GET", result["files"][0]["href"])
    assert first.status_code == 200
    assert len(first.content) == 2048
    assert first.headers["etag"] == f'"{result["files"][0]["sha256"]}"'
    part = service.call("GET", result["files"][0]["href"], headers={"Range": "bytes=0-3"})
    assert part.status_code == 206
    assert part.content == b"/f/0"[:4]
    page = service.call("GET", f"/v1/jobs/{job_id}/items", params={"limit": 200}).json()
    assert len(page["items"]) == 200
    assert page["next_cursor"] is not None
    rest = service.call("GET", f"/v1/jobs/{job_id}/items",
                        params={"cursor": page["next_cursor"], "limit": 1000}).json()  # fmt: skip
    assert len(rest["items"]) == 300
    assert rest["next_cursor"] is None


def test_a_client_that_reconnects_gets_every_item_event_once(service: Service) -> None:
    """SSE with Last-Event-ID and WebSocket with ``after``: after a disconnect mid-job,
    the rest of the events come exactly once, in sequence."""
    files = FileServer(free=100)
    try:
        job_id = service.submit(files.items(300))["job_id"]
        first: list[dict[str, Any]] = []
        for event in service.events(job_id):
            first.append(event)
            if sum(e["type"] == "item" for e in first) >= 50:
                break  # hang up mid-job (the file server holds the other items back)
        last = first[-1]["seq"]
        url = service.url(f"/v1/jobs/{job_id}/ws?after={last}").replace("http://", "ws://")
        ws = websockets.sync.client.connect(url, additional_headers=service.headers)
        files.gate.set()
        sse_rest = list(service.events(job_id, last))
        with ws:
            ws_rest = [json.loads(m) for m in ws]
    finally:
        files.close()
    for rest in (sse_rest, ws_rest):
        events = first + rest
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(seqs) + 1))  # in sequence, none missing or repeated
        items = [e["id"] for e in events if e["type"] == "item"]
        assert sorted(items) == sorted(str(i) for i in range(300))


def test_pause_stops_requests_resume_completes(service: Service) -> None:
    """Paused: no request of the job reaches the file server, and its hosts count nothing
    active; resumed: it completes."""
    files = FileServer(free=40)
    try:
        job_id = service.submit(files.items(120, "p"))["job_id"]
        for event in service.events(job_id):
            if event["type"] == "item":
                break
        paused = service.call("POST", f"/v1/jobs/{job_id}/pause")
        assert paused.status_code == 200
        assert paused.json()["status"] == "paused"
        job = service.call("GET", f"/v1/jobs/{job_id}").json()
        assert job["progress"]["downloading"] == 0
        assert job["hosts"]  # the file server's host, with nothing running
        assert [h["active"] for h in job["hosts"].values()] == [0] * len(job["hosts"])
        files.watching.set()
        assert not files.late.wait(1.0)  # nothing new reaches the server while paused
        assert service.call("POST", f"/v1/jobs/{job_id}/pause").status_code == 409
        files.watching.clear()
        files.gate.set()
        resumed = service.call("POST", f"/v1/jobs/{job_id}/resume")
        assert resumed.status_code == 200
        assert resumed.json()["status"] in ("queued", "running")
        job = service.wait_for(job_id, "completed")
    finally:
        files.close()
    assert job["progress"]["completed"] == 120


def test_cancel_mid_job_ends_it_for_good(service: Service) -> None:
    """Cancelled mid-job: status cancelled, no further requests, resume refused, and it
    can then be deleted with its files."""
    files = FileServer(free=30)
    try:
        job_id = service.submit(files.items(100, "c"))["job_id"]
        for event in service.events(job_id):
            if event["type"] == "item":
                break
        answer = service.call("POST", f"/v1/jobs/{job_id}/cancel")
        assert answer.status_code == 200
        assert answer.json()["status"] == "cancelled"
        files.watching.set()
        assert not files.late.wait(1.0)
        assert service.call("POST", f"/v1/jobs/{job_id}/resume").status_code == 409
        job = service.call("GET", f"/v1/jobs/{job_id}").json()
        assert 0 < job["progress"]["completed"] < 100
        assert job["progress"]["eta_s"] is None  # items left, and none will come
    finally:
        files.close()
    assert service.call("DELETE", f"/v1/jobs/{job_id}").status_code == 204
    assert service.call("GET", f"/v1/jobs/{job_id}").status_code == 404


def test_the_same_idempotency_key_twice_makes_one_job(service: Service, files: FileServer) -> None:
    """A retried POST with the same key returns the same job; another body with that key
    is a conflict."""
    key = {"Idempotency-Key": "retry-me-1"}
    items = files.items(3, "i")
    first = service.submit(items, headers=key)
    again = service.call("POST", "/v1/jobs", json={"items": items}, headers=key)
    assert again.status_code == 202
    assert again.json()["job_id"] == first["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = service.call("POST", "/v1/jobs", json={"items": items[:1]}, headers=key)
    assert other.status_code == 409
    listed = service.call("GET", "/v1/jobs", params={"limit": 1000}).json()["jobs"]
    assert [j["job_id"] for j in listed].count(first["job_id"]) == 1
    service.wait_for(first["job_id"], "completed")


def test_a_webhook_is_retried_signed_and_replays_are_detectable(
    service: Service, files: FileServer
) -> None:
    """The receiver fails twice and gets the third delivery; the signature verifies; all
    attempts share one delivery id; an old timestamp does not verify (a replay)."""
    received: list[tuple[dict[str, str], bytes]] = []
    third = threading.Event()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(500 if len(received) < 3 else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if len(received) == 3:
                third.set()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        callback = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job_id = service.submit(files.items(5, "w"), callback_url=callback)["job_id"]
        assert third.wait(TIMEOUT)
    finally:
        receiver.shutdown()
        receiver.server_close()
    headers, body = received[2]
    assert verify_signature(SECRET, headers, body)
    assert not verify_signature("another secret", headers, body)
    stamp = float(headers["X-Conveyor-Timestamp"])
    assert not verify_signature(SECRET, headers, body, now=stamp + TOLERANCE + 1)  # replayed
    assert len({h["X-Conveyor-Delivery"] for h, _ in received}) == 1
    summary = json.loads(body)
    assert summary["job_id"] == job_id
    assert summary["status"] == "completed"
    job = service.call("GET", f"/v1/jobs/{job_id}").json()
    (hook,) = job["webhooks"]
    assert hook["status"] == "delivered"
    assert [a.get("status") for a in hook["attempts"]] == [500, 500, 200]


def test_every_api_route_needs_the_token(service: Service) -> None:
    """No token or a wrong one: 401; /healthz answers without one."""
    assert requests.get(service.url("/v1/jobs"), timeout=30).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.get(service.url("/v1/jobs"), headers=wrong, timeout=30).status_code == 401
    assert requests.post(service.url("/v1/jobs"), json={"items": [{"url": "http://a/b"}]},
                         timeout=30).status_code == 401  # fmt: skip
    assert requests.get(service.url("/metrics"), timeout=30).status_code == 401
    assert requests.get(service.url("/healthz"), timeout=30).json()["status"] == "ok"
    url = service.url("/v1/jobs/x/ws").replace("http://", "ws://")
    with (
        pytest.raises(websockets.exceptions.InvalidStatus),
        websockets.sync.client.connect(url, open_timeout=30),
    ):
        pass  # refused before the handshake completes
    metrics = service.call("GET", "/metrics").text
    assert "conveyor_jobs{" in metrics
    assert "conveyor_jobs_queue_depth" in metrics


def test_bad_batches_are_refused_or_reported(service: Service) -> None:
    """Not a batch: 422 with the reason; bad items: accepted, reported by index, and
    they end failed ``invalid_entry``; too many items or too big a body: 413."""
    not_batch = service.call("POST", "/v1/jobs", json=["http://a/b"])
    assert not_batch.status_code == 422
    assert "detail" in not_batch.json()
    assert service.call("POST", "/v1/jobs", json={"items": []}).status_code == 422
    job = service.submit([{"url": "ftp://x/y"}, {"url": "http://127.0.0.1:1/../x",
                                                   "name": "../../escape"}])  # fmt: skip
    assert job["invalid"] == 2
    assert [i["index"] for i in job["invalid_items"]] == [0, 1]
    assert "http or https" in job["invalid_items"][0]["error"]
    done = service.wait_for(job["job_id"], "completed")
    assert done["errors"] == {"invalid_entry": 2}
    many = service.call("POST", "/v1/jobs", json={"items": [{"url": "http://a/b"}] * 1001})
    assert many.status_code == 413
    assert "max_items" in many.json()["detail"]
    big = service.call("POST", "/v1/jobs", data=b"{" + b" " * 1_000_001 + b"}",
                       headers={"Content-Type": "application/json"})  # fmt: skip
    assert big.status_code == 413


def test_items_are_listed_in_input_order_rejected_ones_included(
    service: Service, files: FileServer
) -> None:
    """``/items`` pages through a job in the order it was submitted, rejected entries in
    their place, each with the ``index`` submit reported it by, and the same reason: no
    ``line N`` of the service's own input file (a duplicate id is caught at submit too);
    an entry's other keys come back as its ``fields``."""
    entries: list[dict[str, Any]] = files.items(12, "o")
    for index in (2, 3, 9):
        entries[index] = {"url": f"ftp://x/{index}", "id": f"o{index}"}
    entries[10] = {"url": files.base + "/f/o99", "id": "o1"}  # a duplicate id
    entries[0] = {**entries[0], "speaker": "ada", "take": [1, None]}  # other keys: kept
    job = service.submit(entries)
    assert [i["index"] for i in job["invalid_items"]] == [2, 3, 9, 10]
    assert job["invalid_items"][3]["error"] == "duplicate id 'o1' (first seen at index 1)"
    service.wait_for(job["job_id"], "completed")
    listed: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = service.call("GET", f"/v1/jobs/{job['job_id']}/items?limit=5&cursor={cursor}")
        listed += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert [r["index"] for r in listed] == list(range(12))
    assert listed[0]["fields"] == {"speaker": "ada", "take": [1, None]}
    assert listed[1]["fields"] == {}
    assert [r["status"] for r in listed if r["index"] in (2, 3, 9, 10)] == ["failed"] * 4
    assert [r["id"] for r in listed if r["index"] not in (2, 3, 9, 10)] == [
        e["id"] for i, e in enumerate(entries) if i not in (2, 3, 9, 10)
    ]
    rejected = {r["index"]: r["error"] for r in listed if r["index"] in (2, 3, 9, 10)}
    assert list(rejected.values()) == [i["error"] for i in job["invalid_items"]]
    assert not any("line" in error for error in rejected.values())


def test_an_id_that_is_not_valid_unicode_is_a_bad_item_not_a_failed_job(
    service: Service, files: FileServer
) -> None:
    """``{"id": "\\udcff"}`` is valid JSON that no UTF-8 store takes: the item is reported
    invalid at submit and ends ``invalid_entry``; the job's other items complete."""
    entries = [*files.items(2, "s"), {"url": files.base + "/f/s9", "id": "\udcff"}]
    job = service.submit(entries)
    assert job["invalid"] == 1
    assert [i["index"] for i in job["invalid_items"]] == [2]
    done = service.wait_for(job["job_id"], "completed")
    assert (done["progress"]["completed"], done["errors"]) == (2, {"invalid_entry": 1})


def test_files_are_served_only_from_inside_the_job(service: Service, files: FileServer) -> None:
    """Traversal, absolute and unknown names get 404, never a file from elsewhere."""
    job_id = service.submit(files.items(1, "h"))["job_id"]
    service.wait_for(job_id, "completed")
    assert service.call("GET", f"/v1/jobs/{job_id}/files/h0").status_code == 200
    for name in ("../state/state.sqlite3", "..%2F..%2Fservice.sqlite3", "%2Fetc%2Fpasswd",
                 "h0.part", "nope"):  # fmt: skip
        answer = service.call("GET", f"/v1/jobs/{job_id}/files/{name}")
        assert answer.status_code == 404, name
    assert service.call("GET", "/v1/jobs/0000/files/h0").status_code == 404


def test_the_ssrf_guard_refuses_internal_addresses(tmp_path: Path) -> None:
    """With only 127.0.0.2 allowed: 127.0.0.1, 10.0.0.1, [::1], a name resolving to
    127.0.0.1 and a redirect from the allowed host to 127.0.0.1 all fail ``blocked``,
    and the internal server sees no request. (This server keeps 5 events per job.)"""
    inside = FileServer()
    allowed = FileServer(address="127.0.0.2")
    server = Service(write_config(tmp_path, allow_networks=["127.0.0.2/32"], events_kept=5))
    try:
        port = inside.base.rsplit(":", 1)[1]
        items = [
            {"url": f"http://127.0.0.1:{port}/f/a", "name": "a"},
            {"url": "http://10.0.0.1/f/b", "name": "b"},
            {"url": f"http://[::1]:{port}/f/c", "name": "c"},
            {"url": f"http://localhost:{port}/f/d", "name": "d"},
            {"url": f"{allowed.base}/to?http://127.0.0.1:{port}/f/e", "name": "e"},
            {"url": f"{allowed.base}/f/ok", "name": "ok"},
        ]
        job_id = server.submit(items, options={"max_attempts": 1})["job_id"]
        job = server.wait_for(job_id, "completed")
        replay = list(server.events(job_id))  # from the start: more than events_kept
    finally:
        assert server.stop() == 0
        inside.close()
        allowed.close()
    assert job["progress"]["completed"] == 1
    assert job["errors"] == {"blocked": 5}
    assert sum(inside.counts.values()) == 0  # the redirect's target was never asked
    assert allowed.counts[f"/to?http://127.0.0.1:{port}/f/e"] == 1
    # Only the newest events_kept events are kept: a reader from 0 is told to re-read.
    assert replay[0]["type"] == "reset"
    assert replay[0]["first_seq"] == replay[1]["seq"] > 1
    assert len(replay) == 1 + 5


def test_sigkill_mid_job_then_restart_completes_without_downloading_again(
    tmp_path: Path,
) -> None:
    """Kill -9 mid-job; the restarted service resumes it: files completed before the kill
    are not requested again, event numbers continue, a paused job stays paused."""
    files = FileServer(free=120)
    config = write_config(tmp_path)
    server = Service(config)
    try:
        job_id = server.submit(files.items(300, "k"))["job_id"]
        paused_id = server.submit(files.items(5, "q"))["job_id"]
        server.call("POST", f"/v1/jobs/{paused_id}/pause")
        last_seq = 0
        for event in server.events(job_id):
            last_seq = event["seq"]
            if event["type"] == "item" and _committed(tmp_path, job_id) >= 100:
                break
        server.kill()
        done_before = _completed_ids(tmp_path, job_id)
        assert len(done_before) >= 100
        files.gate.set()
        server = Service(config)
        job = server.wait_for(job_id, "completed")
        events = list(server.events(job_id))
        assert server.call("GET", f"/v1/jobs/{paused_id}").json()["status"] == "paused"
    finally:
        server.stop()
        files.close()
    assert job["progress"]["completed"] == 300
    for item_id in done_before:
        assert files.counts[f"/f/{item_id}"] == 1, item_id
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    resumed = [e for e in events if e["type"] == "status" and e.get("resumed")]
    assert resumed
    assert (resumed[0]["status"], resumed[0]["previous"]) == ("queued", "running")
    assert resumed[0]["seq"] > last_seq


def test_repeated_sigkill_every_item_event_exactly_once_and_bytes_never_go_down(
    tmp_path: Path,
) -> None:
    """Kill -9 the service at random moments of one job, several times, reconnecting each
    time where the client left off: every item has exactly one ``item`` event across all
    reconnects (an outcome is announced only after it is durable, and the events of
    outcomes committed just before a kill are caught up), and ``progress.bytes`` never
    goes down and ends equal to the bytes of the completed files."""
    rng = random.Random(20261130)
    total = 1500
    files = FileServer()
    config = write_config(tmp_path, events_kept=100_000)
    server = Service(config)
    items: Counter[str] = Counter()
    progress_bytes: list[int] = []
    last_seq = 0

    def follow(stop_after: int | None) -> None:
        nonlocal last_seq
        seen = 0
        for event in server.events(job_id, last_seq):
            last_seq = event["seq"]
            if event["type"] == "item":
                items[event["id"]] += 1
                seen += 1
            elif event["type"] == "progress":
                progress_bytes.append(event["bytes"])
            if stop_after is not None and seen >= stop_after:
                return

    try:
        job_id = server.submit(files.items(total, "r"))["job_id"]
        for _ in range(4):
            follow(rng.randint(10, 150))
            shown = server.call("GET", f"/v1/jobs/{job_id}").json()["progress"]
            server.kill()
            server = Service(config)
            again = server.call("GET", f"/v1/jobs/{job_id}").json()["progress"]
            assert again["bytes"] >= shown["bytes"]  # the job's page never goes back
            assert again["completed"] >= shown["completed"]
        follow(None)  # to the end of the job
        job = server.call("GET", f"/v1/jobs/{job_id}").json()
        stored = Counter(e["id"] for e in server.events(job_id) if e["type"] == "item")
    finally:
        server.stop()
        files.close()
    assert job["status"] == "completed", job
    expected = {f"r{i}" for i in range(total)}
    assert set(items) == expected
    assert [i for i, n in items.items() if n != 1] == []  # what the client saw
    assert stored == items  # what the service kept, read again from the start
    assert progress_bytes == sorted(progress_bytes)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "data" / "jobs" / job_id).glob("files/*"))
    assert on_disk == total * BODY_SIZE
    assert job["progress"]["bytes"] == on_disk
    assert progress_bytes[-1] == on_disk


def _committed(folder: Path, job_id: str) -> int:
    return len(_completed_ids(folder, job_id))


def _completed_ids(folder: Path, job_id: str) -> list[str]:
    path = folder / "data" / "jobs" / job_id / "state" / "state.sqlite3"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in db.execute("SELECT id FROM items WHERE status='completed'")]
    finally:
        db.close()


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    """Listening beyond loopback needs a token: exit 2 and a message saying so."""
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "serve", "--host", "0.0.0.0", "--port", "0",
         "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 2
    assert "without a token" in done.stderr
    assert "CONVEYOR_SERVICE_TOKEN" in done.stderr


def test_serve_without_a_token_says_the_api_is_open(tmp_path: Path) -> None:
    """On loopback a token is not required, but the service says at start that without
    one anyone on this machine can use the API (and with one it says nothing of it)."""
    open_server = Service(write_config(tmp_path / "open", token=""))
    open_server.stop()
    assert any("no service.token is set" in line for line in open_server.log)
    closed = Service(write_config(tmp_path / "closed"))
    closed.stop()
    assert not any("no service.token" in line for line in closed.log)


def test_submit_follow_from_the_command_line(
    service: Service, files: FileServer, tmp_path: Path
) -> None:
    """``submit LIST --follow`` prints the job id, follows it to the end, exits 0."""
    listing = tmp_path / "list.ndjson"
    listing.write_text("".join(json.dumps(i) + "\n" for i in files.items(20, "s")))
    done = subprocess.run(
        [sys.executable, "-m", "runtime", "submit", str(listing), "--server", service.base,
         "--token", TOKEN, "--follow"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.splitlines()[0]
    assert f"job {job_id} completed: 20 completed, 0 failed" in done.stdout
    assert service.call("GET", f"/v1/jobs/{job_id}").json()["progress"]["completed"] == 20


def test_a_pending_webhook_survives_a_restart(tmp_path: Path) -> None:
    """The receiver is down when the job ends; the service is killed; after a restart the
    same delivery (same id) reaches the receiver once it is up."""
    files = FileServer()
    server = Service(write_config(tmp_path, webhook_backoff=0.2))
    receiver: ThreadingHTTPServer | None = None
    try:
        probe = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        port = probe.server_address[1]
        probe.server_close()  # a port nobody listens on (for now)
        job_id = server.submit(files.items(3, "r"),
                               callback_url=f"http://127.0.0.1:{port}/hook")["job_id"]  # fmt: skip
        server.wait_for(job_id, "completed")
        for event in server.events(job_id):
            if event["type"] == "webhook":
                break  # one attempt failed: the delivery is pending
        first = server.call("GET", f"/v1/jobs/{job_id}").json()["webhooks"][0]
        server.kill()
        got: list[dict[str, str]] = []
        arrived = threading.Event()

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                got.append(dict(self.headers))
                self.send_response(204)
                self.end_headers()
                arrived.set()

            def log_message(self, *args: Any) -> None:
                pass

        receiver = ThreadingHTTPServer(("127.0.0.1", port), Receiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        server = Service(write_config(tmp_path, webhook_backoff=0.2))
        assert arrived.wait(TIMEOUT)
    finally:
        server.stop()
        files.close()
        if receiver is not None:
            receiver.shutdown()
            receiver.server_close()
    assert first["status"] == "pending"
    assert got[0]["X-Conveyor-Delivery"] == first["delivery_id"]


def test_stopping_the_service_ends_open_streams_cleanly(tmp_path: Path) -> None:
    """SIGTERM with a client following a running job: the stream ends, the server exits
    0 without a traceback, and the job resumes at the next start."""
    files = FileServer(free=5)
    config = write_config(tmp_path)
    server = Service(config)
    try:
        job_id = server.submit(files.items(50, "t"))["job_id"]
        stream = server.events(job_id)
        for event in stream:
            if event["type"] == "item":
                break
        assert server.stop() == 0
        assert [e["type"] for e in stream if e["type"] == "status"] == []  # it just ended
        assert not any("Traceback" in line for line in server.log), "".join(server.log)
        files.gate.set()
        server = Service(config)
        assert server.wait_for(job_id, "completed")["progress"]["completed"] == 50
    finally:
        server.stop()
        files.close()
