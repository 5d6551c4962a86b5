"""Cluster mode end to end: a coordinator (``run`` with ``cluster.redis``) and node
processes (``worker``), a real redis-server and a real file server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
import redis

from actors.cluster import ClusterHub
from messages import (
    Demand,
    DownloadFailed,
    Grant,
    NodeBye,
    NodeHello,
    StartDownloader,
    WorkItem,
    decode_batch,
)
from messages.control import Attach, Batch
from runtime.testing import FaultServer, RedisServer
from tests.helpers import read_manifest, run_cli, start_cli

TIMEOUT = 120


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


def make_files(count: int) -> dict[str, bytes]:
    return {f"/f{i:04d}.bin": hashlib.sha256(str(i).encode()).digest() * 60 for i in range(count)}


def write_coordinator(tmp: Path, server: FaultServer, files: dict[str, bytes], url: str,
                      extra: str = "") -> Path:  # fmt: skip
    entries = [{"url": server.url(p), "id": p[1:], "sha256": hashlib.sha256(b).hexdigest()}
               for p, b in files.items()]  # fmt: skip
    (tmp / "files.json").write_text(json.dumps(entries))
    config = tmp / "coordinator.toml"
    config.write_text(
        f'[input]\npath = "files.json"\n[output]\ndir = "out"\n'
        f'[state]\ndir = "state"\npersist_interval = 0.1\n'
        f"[download]\nper_host = 3\n[retry]\nbackoff_initial = 0.0\n"
        f'[cluster]\nredis = "{url}"\nname = "b"\nlocal_downloads = false\n'
        f"node_timeout = 2.0\n" + extra
    )
    return config


def start_node(tmp: Path, url: str, i: int, *extra: str) -> subprocess.Popen[str]:
    return start_cli("worker", "--redis", url, "--batch", "b", "--name", f"n{i}",
                     "--output", tmp / f"node{i}", "--set", "download.concurrency=4",
                     "--log-format", "json", *extra)  # fmt: skip


class Watched:
    """A process's stderr, read as it comes (so a test can wait for a line)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def end(self) -> tuple[int | None, str]:
        """Wait for the process (killed if it outlives the timeout); code and stderr."""
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return self.proc.returncode, "".join(self.lines)


def finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int | None, str]]:
    """Wait for each process (killing one that outlives the timeout); codes and stderr."""
    results = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        results.append((proc.returncode, err))
    return results


def node_files(tmp: Path, nodes: int) -> dict[str, list[Path]]:
    """Every file found in the nodes' output directories, by name."""
    found: dict[str, list[Path]] = {}
    for i in range(nodes):
        for path in (tmp / f"node{i}").glob("*"):
            found.setdefault(path.name, []).append(path)
    return found


def assert_every_item_once_and_verified(tmp: Path, files: dict[str, bytes], nodes: int) -> None:
    records = read_manifest(tmp / "state" / "manifest.jsonl")
    assert sorted(r["id"] for r in records) == sorted(p[1:] for p in files)  # one line each
    assert {r["status"] for r in records} == {"completed"}
    for r in records:  # the line names the node, and the file is where it says
        i = r["node"].split("-")[0].removeprefix("n")
        assert Path(r["path"]).parent == tmp / f"node{i}", r
        assert Path(r["path"]).read_bytes() == files["/" + r["id"]], r
    found = node_files(tmp, nodes)
    for path, body in files.items():
        copies = found.get(path[1:], [])
        assert copies, f"{path} is on no node"
        assert any(c.read_bytes() == body for c in copies), path


def start_coordinator(config: Path) -> subprocess.Popen[str]:
    return start_cli("run", config, "--quiet", "--log-format", "json")


def assert_going(server: FaultServer, url: str, requests: int, *names: str) -> None:
    """The nodes named have joined and the server has seen ``requests`` requests."""
    assert wait_joined(url, *names), f"not all of {names} joined"
    assert server.wait_for_requests(requests, timeout=TIMEOUT), "the batch never got going"


def wait_joined(url: str, *names: str) -> bool:
    """Whether each of the nodes named (``n0``, …) joined: the coordinator wrote to its
    stream (the downloaders it starts there)."""
    client = redis.Redis.from_url(url)
    try:
        return wait_until(lambda: all(any(client.scan_iter(f"conveyor:b:down:{n}-*".encode()))
                                      for n in names))  # fmt: skip
    finally:
        client.close()


def wait_until(condition: Any, timeout: float = TIMEOUT) -> bool:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return True
        done.wait(0.02)
    return False


def test_three_nodes_download_a_batch_within_the_per_host_limit(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Every item completes once, every file is verified on the node that holds it, and
    the server never sees more than per_host connections at once across the nodes."""
    files = make_files(300)
    with FaultServer(files, delay=0.01) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        nodes = [start_node(tmp_path, redis_server.url, i) for i in range(3)]
        coordinator = start_coordinator(config)
        (code, err), *node_results = finish([coordinator, *nodes])
        assert code == 0, err[-3000:]
        assert server.max_active <= 3
        assert sum(server.counts.values()) == len(files)  # nothing fetched twice
    for node_code, node_err in node_results:
        assert node_code == 0, node_err[-2000:]
        assert "stops: the batch ended (done)" in node_err
    assert_every_item_once_and_verified(tmp_path, files, 3)
    assert sum(len(v) for v in node_files(tmp_path, 3).values()) == len(files)
    joined = [line for line in err.splitlines() if "cluster node joined" in line]
    assert len(joined) == 3
    status = run_cli("status", tmp_path / "state")
    nodes_table = status.stdout.split("node ")[-1]
    assert status.stdout.count(" s ago") == 3, status.stdout  # three nodes, last seen
    for node in json.loads(run_cli("status", tmp_path / "state", "--json").stdout)["run"]["nodes"]:
        assert abs(node["last_seen_at"] - time.time()) < TIMEOUT  # (then, not the run's age)
    assert "in flight" in nodes_table
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert sorted(n["node"][:2] for n in summary["run"]["nodes"]) == ["n0", "n1", "n2"]
    assert sum(n["done"] for n in summary["run"]["nodes"]) == len(files)
    client = redis.Redis.from_url(redis_server.url)
    assert client.xlen("conveyor:b:up") <= 3  # nothing in flight is left (a last beat may be)
    client.close()


def test_a_killed_node_loses_nothing(tmp_path: Path, redis_server: RedisServer) -> None:
    """kill -9 of a node mid-run: after node_timeout its items go to the others; every
    item still ends once, every file is verified."""
    files = make_files(300)
    with FaultServer(files, delay=0.02) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        nodes = [start_node(tmp_path, redis_server.url, i) for i in range(3)]
        coordinator = start_coordinator(config)
        try:
            assert_going(server, redis_server.url, 60, "n0")
            nodes[0].send_signal(signal.SIGKILL)
            (code, err), *_ = finish([coordinator, *nodes[1:]])
        finally:
            for proc in (coordinator, *nodes):
                proc.kill()
            nodes[0].communicate()
        assert code == 0, err[-3000:]
        assert "cluster node lost" in err
    assert_every_item_once_and_verified(tmp_path, files, 3)


def test_a_node_paused_past_the_timeout_comes_back_under_a_new_name(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGSTOP past node_timeout, then SIGCONT: what it reports late is refused (its
    leases went to the others), it joins again and helps finish; every item ends once."""
    files = make_files(300)
    client = redis.Redis.from_url(redis_server.url)
    with FaultServer(files, delay=0.02) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        nodes = [start_node(tmp_path, redis_server.url, i) for i in range(2)]
        coordinator = start_coordinator(config)
        try:
            assert_going(server, redis_server.url, 40, "n0", "n1")
            nodes[0].send_signal(signal.SIGSTOP)

            def told_lost() -> bool:
                for key in client.scan_iter(b"conveyor:b:down:n0-*"):
                    for _, fields in client.xrange(key):
                        if any(type(m).__name__ == "NodeLost" for m in decode_batch(fields[b"f"])):
                            return True
                return False

            assert wait_until(told_lost), "the paused node was never counted lost"
            nodes[0].send_signal(signal.SIGCONT)
            (code, err), *node_results = finish([coordinator, *nodes])
        finally:
            for proc in (coordinator, *nodes):
                proc.kill()
            client.close()
        assert code == 0, err[-3000:]
    assert "asks this node to join again" in node_results[0][1]
    assert_every_item_once_and_verified(tmp_path, files, 2)


def test_a_cluster_refuses_what_it_cannot_do_yet(tmp_path: Path) -> None:
    from runtime import Config, ConfigError

    for extra, message in (
        ({"processing": {"processor": "runtime.plugins:ChecksumProcessor"}}, "no processor"),
        ({"output": {"keep": "none"}}, "keeps every file on its node"),
        ({"cluster": {"redis": "http://x"}}, "must be a redis://"),
        ({"cluster": {"name": "../x"}}, "cluster.name must be ASCII letters"),
        ({"cluster": {"node_timeout": 0.5}}, "at least 2 s"),
        ({"cluster": {"redis": "", "name": "x"}}, "cluster.redis is empty"),
    ):
        data: dict[str, Any] = {"cluster": {"redis": "redis://127.0.0.1:1/0"}}
        for section, values in extra.items():
            data.setdefault(section, {}).update(values)
        with pytest.raises(ConfigError, match=message):
            Config.from_mapping(data)


def test_redis_errors_are_said_in_the_urls_words(tmp_path: Path) -> None:
    from runtime.core.streams import explained

    no_password = Exception("HELLO must be called with the client already authenticated")
    assert "requires a password" in explained(no_password, "redis://h/0")
    assert "wrong password" in explained(Exception("WRONGPASS invalid"), "redis://:x@h/0")
    missing = tmp_path / "ca.pem"
    said = explained(Exception("Error 2 connecting"), f"rediss://h/0?ssl_ca_certs={missing}")
    assert f"the CA certificate file {missing} (ssl_ca_certs in the url) does not exist" == said
    assert explained(Exception("Connection refused"), "redis://h/0") == "Connection refused"


class _Recorder(pykka.ThreadingActor):
    """Stands in for the StateKeeper: keeps what it is told, answers a Flush."""

    def __init__(self, seen: list[Any], event: threading.Event) -> None:
        super().__init__()
        self.seen = seen
        self.event = event

    def on_receive(self, message: Any) -> Any:
        self.seen.extend(message.messages if isinstance(message, Batch) else [message])
        self.event.set()
        return None


def test_a_node_speaks_only_for_its_own_downloaders(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What a node sends for another node's worker, or before it joined, never reaches
    the state; a node unknown to the coordinator is told to join again."""
    from runtime import Config
    from runtime.core.clock import SystemClock
    from runtime.core.streams import StreamLink

    seen: list[Any] = []
    event = threading.Event()
    keeper = _Recorder.start(seen, event)
    config = Config.from_mapping({"cluster": {"redis": redis_server.url, "node_timeout": 60}})
    hub = ClusterHub(config=config, batch="h", state_keeper=keeper, clock=SystemClock())
    hub.start()
    link = StreamLink.connect(redis_server.url, "h")
    try:
        link.send_up("stranger", [Demand(worker="stranger/downloader-0", n=1)])
        link.send_up("a", [NodeHello(node="a", downloaders=1, mailbox=2)])
        assert wait_until(lambda: any(isinstance(m, Attach) for m in seen), 10)
        link.send_up("a", [Demand(worker="b/downloader-0", n=5),
                           Demand(worker="a/downloader-0", n=1)])  # fmt: skip
        assert wait_until(lambda: any(isinstance(m, Demand) for m in seen), 10)
        hub_told = [m for m in seen if isinstance(m, Demand)]
        assert hub_told == [Demand(worker="a/downloader-0", n=1)]
        _, frames = link.read_down("stranger", "0", block_ms=2000)
        assert [type(m).__name__ for f in frames for m in f] == ["NodeLost"]
        link.send_up("greedy", [NodeHello(node="greedy", downloaders=10**9, mailbox=10**9)])
        assert wait_until(lambda: any(getattr(m, "node", "") == "greedy" for m in seen), 10)
        greedy = [m for m in seen if isinstance(m, Attach) and m.node == "greedy"]
        assert wait_until(lambda: len([m for m in seen if isinstance(m, Attach)
                                       and m.node == "greedy"]) == 512, 10)  # fmt: skip
        assert max(m.credit for m in greedy) <= 4096  # bounded like this machine's own
        assert wait_until(lambda: link.client.xlen(link.up) == 0, 10)  # acknowledged, gone
    finally:
        hub.finish("done")
        link.client.close()
        keeper.stop()


def test_a_killed_coordinator_restarted_and_a_restarted_redis_lose_nothing(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """kill -9 of the coordinator mid-run and a restart: it resumes from its state and
    the nodes, unknown to it, join again. Then Redis killed and started again empty:
    every node joins again and what was in flight is granted again. Every item ends once
    and every file is verified."""
    files = make_files(400)
    with FaultServer(files, delay=0.02) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        nodes = [start_node(tmp_path, redis_server.url, i) for i in range(2)]
        first = start_coordinator(config)
        try:
            assert server.wait_for_requests(60, timeout=TIMEOUT), "the batch never got going"
            first.send_signal(signal.SIGKILL)
            assert first.wait(timeout=TIMEOUT) == -signal.SIGKILL
            again = start_coordinator(config)
            seen = sum(server.counts.values())
            assert server.wait_for_requests(seen + 60, timeout=TIMEOUT), "no restart"
            redis_server.stop()  # Redis goes away, and comes back empty on its port
            port = redis_server.port
            threading.Event().wait(2.5)  # (down longer than a node's beat: the fault's length)
            redis_server.start_on(port)
            (code, err), *node_results = finish([again, *nodes])
        finally:
            for proc in (first, *nodes):
                proc.kill()
            first.communicate()
        assert code == 0, err[-3000:]
        assert "Redis lost its streams" in err
    for node_code, node_err in node_results:
        assert node_code == 0, node_err[-2000:]
        assert "asks this node to join again" in node_err
    assert_every_item_once_and_verified(tmp_path, files, 2)


def test_a_poison_item_fails_after_max_deliveries_instead_of_killing_every_node(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Whichever node requests the poison file dies (the server kills it, told by its
    User-Agent); a new node takes its place. After cluster.max_deliveries (3) nodes lost
    with it, it fails node_lost; every other item completes."""
    files = make_files(40)
    nodes: dict[str, subprocess.Popen[str]] = {}
    lock = threading.Lock()

    def start(i: int) -> None:
        nodes[f"node-{i}"] = start_node(tmp_path, redis_server.url, i, "--set",
                                        f"download.user_agent=node-{i}", "--set",
                                        "download.concurrency=1")  # fmt: skip

    def on_request(path: str, _range: str | None) -> None:
        if path == "/f0007.bin":
            with lock:
                agent = server.agents[path][-1] or ""
                if agent in nodes:
                    nodes[agent].send_signal(signal.SIGKILL)

    with FaultServer(files, on_request=on_request) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        with lock:
            for i in range(2):
                start(i)
        coordinator = start_coordinator(config)
        try:
            for i in range(2, 10):  # keep two nodes alive: replace each one that dies
                done = threading.Event()
                for _ in range(int(TIMEOUT / 0.02)):
                    if coordinator.poll() is not None:
                        break
                    with lock:
                        dead = [n for n, p in nodes.items() if p.poll() is not None]
                        if dead:
                            nodes.pop(dead[0]).communicate()
                            if server.counts["/f0007.bin"] < 3:  # (a later one would wait
                                start(i)  # for a batch that already ended)
                            break
                    done.wait(0.02)
                if coordinator.poll() is not None:
                    break
            (code, err), *_ = finish([coordinator, *nodes.values()])
        finally:
            for proc in (coordinator, *nodes.values()):
                proc.kill()
        assert server.counts["/f0007.bin"] == 3  # one delivery per lost node, no more
    assert code == 1, err[-3000:]  # the poison item failed
    records = {r["id"]: r for r in read_manifest(tmp_path / "state" / "manifest.jsonl")}
    assert len(records) == len(files)
    assert records["f0007.bin"]["error_kind"] == "node_lost"
    assert {r["status"] for i, r in records.items() if i != "f0007.bin"} == {"completed"}


def test_a_hostile_grant_on_a_nodes_stream_writes_nothing_outside_its_output(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """Whoever writes to a node's stream cannot make it write outside its output
    directory: a granted name with '..' fails unsafe_name (what it says goes up as a
    DownloadFailed); garbage on its stream is refused."""
    from runtime.core.streams import StreamLink

    files = {"/x.bin": b"payload"}
    link = StreamLink.connect(redis_server.url, "b")
    link.ensure_group()
    link.client.sadd("conveyor:batches", "b")
    link.client.set(link.owner_key, "this test", ex=120)  # (the coordinator it speaks to)
    with FaultServer(files) as server:
        node = start_node(tmp_path, redis_server.url, 0)
        try:
            hello: list[Any] = []

            def said_hello() -> bool:
                hello.extend(e for e in link.read_up("coordinator", block_ms=50).envelopes
                             if isinstance(e.messages[0], NodeHello))  # fmt: skip
                return bool(hello)

            assert wait_until(said_hello, 30), "the node never said hello"
            name = hello[0].node
            evil = WorkItem(id="e", url=server.url("/x.bin"), name="../../escape.bin", attempts=1)
            link.send_down(name, [StartDownloader(worker=f"{name}/downloader-0", index=0)])
            link.send_down(name, [Grant(worker=f"{name}/downloader-0", items=(evil,))])
            failures: list[Any] = []

            def reported() -> bool:
                for e in link.read_up("coordinator", block_ms=50).envelopes:
                    failures.extend(m for m in e.messages if isinstance(m, DownloadFailed))
                return bool(failures)

            assert wait_until(reported, 30), "the node never reported the hostile grant"
            assert failures[0].error_kind == "unsafe_name"
        finally:
            node.kill()
            node.communicate()
            link.client.close()
    assert not (tmp_path / "escape.bin").exists()
    assert not (tmp_path.parent / "escape.bin").exists()


def test_a_password_protected_redis_works_and_a_wrong_password_is_a_clear_error(
    tmp_path: Path,
) -> None:
    files = make_files(30)
    secret = "s3cret"  # noqa: S105 - a test server's
    with RedisServer(password=secret) as secured, FaultServer(files) as server:
        config = write_coordinator(tmp_path, server, files, secured.url)
        node = start_node(tmp_path, secured.url, 0)
        coordinator = start_coordinator(config)
        (code, err), (node_code, node_err) = finish([coordinator, node])
        assert code == 0, err[-3000:]
        assert node_code == 0, node_err[-2000:]
        wrong = secured.url.replace(secret, "guess")
        bad = start_cli("worker", "--redis", wrong, "--batch", "b", "--output", tmp_path / "x")
        ((bad_code, bad_err),) = finish([bad])
        assert bad_code == 2, bad_err
        assert "cannot join the cluster" in bad_err
        assert "guess" not in bad_err  # (the password is not printed)
    assert_every_item_once_and_verified(tmp_path, files, 1)


def test_a_cluster_over_tls(tmp_path: Path) -> None:
    """rediss:// with the CA named in the url (``ssl_ca_certs``): the batch completes;
    a node that does not trust the server's certificate is a clear error."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {}
    for name, blob in (("cert", cert.cert_chain_pems[0]), ("key", cert.private_key_pem),
                       ("ca", ca.cert_pem)):  # fmt: skip
        paths[name] = str(tmp_path / f"{name}.pem")
        blob.write_to_path(paths[name])
    files = make_files(30)
    with RedisServer(tls=(paths["cert"], paths["key"], paths["ca"])) as secured, \
            FaultServer(files) as server:  # fmt: skip
        assert secured.url.startswith("rediss://")
        config = write_coordinator(tmp_path, server, files, secured.url)
        node = start_node(tmp_path, secured.url, 0)
        coordinator = start_coordinator(config)
        (code, err), (node_code, node_err) = finish([coordinator, node])
        assert code == 0, err[-3000:]
        assert node_code == 0, node_err[-2000:]
        untrusting = secured.url.partition("?")[0]  # (the system's CAs only)
        bad = start_cli("worker", "--redis", untrusting, "--batch", "b", "--output", tmp_path / "x")
        ((bad_code, bad_err),) = finish([bad])
        assert bad_code == 2, bad_err
        assert "cannot join the cluster" in bad_err
        assert "certificate" in bad_err.lower()
    assert_every_item_once_and_verified(tmp_path, files, 1)


def test_a_batch_has_one_coordinator_and_a_restarted_one_takes_over(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A second coordinator (another state) on the same batch name is refused; the same
    state's coordinator started again (after kill -9) takes the batch over."""
    from runtime import Config, ConveyorError
    from runtime.core.clock import SystemClock

    seen: list[Any] = []
    keeper = _Recorder.start(seen, threading.Event())

    def hub_of(state: str) -> ClusterHub:
        config = Config.from_mapping(
            {"cluster": {"redis": redis_server.url}, "state": {"dir": str(tmp_path / state)}}
        )
        return ClusterHub(config=config, batch="one", state_keeper=keeper, clock=SystemClock())

    first = hub_of("a")
    try:
        with pytest.raises(ConveyorError, match="already has a coordinator"):
            hub_of("b")
        hub_of("a").link.client.close()  # (the same state: taken over)
    finally:
        first.finish("done")
        keeper.stop()
    client = redis.Redis.from_url(redis_server.url)
    assert client.get("conveyor:one:ended") == b"done"
    assert client.exists("conveyor:one:coordinator") == 0
    client.close()


def test_ctrl_c_of_the_coordinator_stops_its_nodes_and_one_kept_running_serves_the_resume(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGINT of the coordinator mid-run: a node ends with exit code 130 saying the
    batch was not done; a node with --keep-running waits, and serves the resumed run to
    its end. Every item ends once, every file is verified."""
    files = make_files(300)
    client = redis.Redis.from_url(redis_server.url)
    with FaultServer(files, delay=0.02) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        plain = start_node(tmp_path, redis_server.url, 0)
        kept = start_node(tmp_path, redis_server.url, 1, "--keep-running")
        watch = Watched(kept)
        first = start_coordinator(config)
        try:
            assert_going(server, redis_server.url, 60, "n0", "n1")
            first.send_signal(signal.SIGINT)
            (code, err), (plain_code, plain_err) = finish([first, plain])
            assert code == 130, err[-3000:]
            assert plain_code == 130, plain_err[-2000:]
            assert "stopped before the batch was done" in plain_err
            assert kept.poll() is None  # still there, waiting
            again = start_coordinator(config)
            ((code, err),) = finish([again])
            assert code == 0, err[-3000:]
            # The kept node heard the batch end, and is back waiting for its next run.
            said = lambda: watch.said("stops: the batch ended (done)")  # noqa: E731
            assert wait_until(said, 30), "the kept node did not hear the end"
            assert wait_until(
                lambda: (
                    watch.said("joins batch 'b'")
                    and len([line for line in watch.lines if "joins batch 'b'" in line]) >= 3
                ),
                30,
            ), "the kept node did not wait again"  # (joined the first run, the second, the next)
            kept.send_signal(signal.SIGTERM)
            _, kept_err = watch.end()
        finally:
            for proc in (first, plain, kept):
                proc.kill()
            client.close()
        assert "which this node waits for" in kept_err
        assert "stops: the batch ended (done)" in kept_err
    assert_every_item_once_and_verified(tmp_path, files, 2)


def test_a_coordinator_alone_says_how_to_start_a_node(redis_server: RedisServer) -> None:
    """With local_downloads = false and no node for 10 s, the coordinator says what to
    run (and not while a node is there)."""
    from runtime import Config
    from runtime.testing import FakeClock, capture_logs

    seen: list[Any] = []
    keeper = _Recorder.start(seen, threading.Event())
    clock = FakeClock()
    config = Config.from_mapping({"cluster": {"redis": redis_server.url, "node_timeout": 600,
                                              "local_downloads": False}})  # fmt: skip
    hub = ClusterHub(config=config, batch="lonely", state_keeper=keeper, clock=clock)
    try:
        with capture_logs() as logs:
            hub.start()
            said = lambda: any("no node is in the batch" in e["event"] for e in logs)  # noqa: E731
            clock.advance(5)
            assert not wait_until(said, 0.5)
            clock.advance(11)  # (10 s past whichever of the two it first saw)
            assert wait_until(said, 10), logs
            assert "worker --redis URL --batch lonely" in next(
                e["event"] for e in logs if "no node is in the batch" in e["event"]
            )
            hub.link.send_up("a", [NodeHello(node="a", downloaders=1, mailbox=1)])
            assert wait_until(lambda: any(isinstance(m, Attach) for m in seen), 10)
            logs.clear()
            clock.advance(120)
            assert not wait_until(said, 0.5)
    finally:
        hub.finish("done")
        keeper.stop()


@pytest.mark.usefixtures("debug_logs")
def test_a_node_says_when_its_coordinator_is_away(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """A node whose coordinator stopped running (its key expired) says so once, and
    says when it is back; before the coordinator ever ran, it only says it waits."""
    from actors.node import run_node
    from runtime import Config
    from runtime.core.clock import SystemClock
    from runtime.core.streams import StreamLink
    from runtime.pipeline import default_transports
    from runtime.testing import capture_logs

    config = Config.from_mapping({"output": {"dir": str(tmp_path / "out")}})
    clock = SystemClock()
    link = StreamLink.connect(redis_server.url, "away")
    stop = threading.Event()
    node = threading.Thread(target=run_node, kwargs={
        "link": link, "node": "n", "config": config, "clock": clock, "stop": stop,
        "transport_factory": default_transports(config, clock, simulate=True),
    })  # fmt: skip
    try:
        with capture_logs() as logs:
            node.start()
            events = lambda: [e["event"] for e in logs]  # noqa: E731
            assert wait_until(lambda: any("waiting for the batch's" in e for e in events()), 10)
            looks = lambda: link.client.info("commandstats").get("cmdstat_mget", {}).get("calls", 0)  # noqa: E731
            before = looks()
            assert wait_until(lambda: looks() >= before + 3, 10)  # it looked for a coordinator
            assert link.client.exists(link.up) == 0  # … and wrote nothing to Redis meanwhile
            link.client.set(link.owner_key, "elsewhere", ex=60)
            beats = lambda: link.client.xlen(link.up)  # noqa: E731
            seen = beats()
            assert wait_until(lambda: beats() >= seen + 2, 10)  # (a beat saw the key)
            assert not any("not running" in e for e in events())
            link.client.delete(link.owner_key)  # its time to live ran out
            assert wait_until(lambda: any("not running" in e for e in events()), 10), logs
            link.client.set(link.owner_key, "elsewhere", ex=60)
            assert wait_until(lambda: any("is back" in e for e in events()), 10), logs
            assert sum("not running" in e for e in events()) == 1
    finally:
        stop.set()
        node.join(10)
        link.client.close()


def test_validate_checks_the_clusters_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    files = make_files(3)
    with FaultServer(files) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        done = run_cli("validate", config)
        assert done.returncode == 0, done.stderr
        assert "cluster: batch 'b'" in done.stdout
        assert f"worker --redis {redis_server.url} --batch b" in done.stdout
        assert "downloads: none here" in done.stdout
        with socket.socket() as closed:  # bound, never listening: connections are refused
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
            away = write_coordinator(tmp_path, server, files, f"redis://127.0.0.1:{port}/0")
            done = run_cli("validate", away)
        assert done.returncode == 2
        assert f"cannot reach the cluster's Redis at redis://127.0.0.1:{port}/0" in done.stderr


def test_status_says_how_long_ago_a_node_was_heard_of_as_of_now() -> None:
    """A finished run's nodes, looked at hours later, were last seen hours ago — not the
    fraction of a second recorded at the end of the run."""
    import io

    from runtime.report import print_nodes

    nodes = [{"node": "n0-abc", "address": "h", "in_flight": 0, "done": 5,
              "last_seen_s": 0.4, "last_seen_at": 1_000_000.0}]  # fmt: skip
    out = io.StringIO()
    print_nodes(nodes, out, now=1_000_000.0 + 3 * 3600)
    assert "3.0 h ago" in out.getvalue()
    out = io.StringIO()
    print_nodes(nodes, out)  # (the end-of-run summary: as recorded)
    assert "0.4 s ago" in out.getvalue()


def test_a_failed_items_manifest_line_names_the_node_that_tried_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    files = make_files(5)
    with FaultServer(files) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        entries = json.loads((tmp_path / "files.json").read_text())
        entries.append({"url": server.url("/status/404/gone.bin"), "id": "gone"})
        (tmp_path / "files.json").write_text(json.dumps(entries))
        node = start_node(tmp_path, redis_server.url, 0)
        coordinator = start_coordinator(config)
        (code, err), (node_code, node_err) = finish([coordinator, node])
    assert code == 1, err[-3000:]  # (an item failed)
    assert node_code == 0, node_err[-2000:]
    late = Watched(start_node(tmp_path, redis_server.url, 1))  # (its next run may come)
    assert wait_until(lambda: late.said("waits for its next run"), 30), late.lines
    assert any("batch 'b' ended (done)" in line for line in late.lines)
    late.proc.send_signal(signal.SIGTERM)
    assert late.end()[0] == 130
    records = {r["id"]: r for r in read_manifest(tmp_path / "state" / "manifest.jsonl")}
    assert records["gone"]["status"] == "failed"
    assert records["gone"]["error_kind"] == "http_4xx"
    assert records["gone"]["node"].startswith("n0-")


def test_a_kept_running_node_waits_for_a_batch_to_open_and_serves_it(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``worker --keep-running`` without ``--batch``, before any batch is open: it waits,
    serves the batch when its coordinator opens it (which downloads nothing itself), and
    waits again after; a node that leaves is shown as left, not lost."""
    files = make_files(30)
    with FaultServer(files) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        node = start_cli("worker", "--redis", redis_server.url, "--name", "n0", "--output",
                         tmp_path / "node0", "--keep-running", "--log-format", "json")  # fmt: skip
        try:
            coordinator = start_coordinator(config)
            ((code, err),) = finish([coordinator])
            assert code == 0, err[-3000:]
        finally:
            node.send_signal(signal.SIGTERM)
            ((node_code, node_err),) = finish([node])
        assert node_code == 130, node_err[-2000:]
        assert "joins batch 'b'" in node_err
    assert_every_item_once_and_verified(tmp_path, files, 1)


def test_a_node_that_says_goodbye_is_shown_as_left(redis_server: RedisServer) -> None:
    from runtime import Config
    from runtime.core.clock import SystemClock

    seen: list[Any] = []
    keeper = _Recorder.start(seen, threading.Event())
    config = Config.from_mapping({"cluster": {"redis": redis_server.url, "node_timeout": 60}})
    hub = ClusterHub(config=config, batch="bye", state_keeper=keeper, clock=SystemClock())
    hub.start()
    try:
        hub.link.send_up("a", [NodeHello(node="a", downloaders=1, mailbox=1)])
        assert wait_until(lambda: any(isinstance(m, Attach) for m in seen), 10)
        hub.link.send_up("a", [NodeBye(node="a", reason="stopped")])
        assert wait_until(lambda: any(n.get("left") for n in hub.snapshot()), 10)
        ((gone),) = hub.snapshot()
        assert gone["lost"]
        assert gone["left"]
    finally:
        hub.finish("done")
        keeper.stop()


def test_a_node_lost_while_the_batch_ended_leaves_when_it_comes_back(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """SIGSTOP of a node until the others have finished the batch, then SIGCONT: it hears
    it was lost, finds the batch over and leaves (exit 0) instead of waiting forever."""
    files = make_files(120)
    with FaultServer(files, delay=0.02) as server:
        config = write_coordinator(tmp_path, server, files, redis_server.url)
        nodes = [start_node(tmp_path, redis_server.url, i) for i in range(2)]
        coordinator = start_coordinator(config)
        try:
            assert_going(server, redis_server.url, 20, "n0", "n1")
            nodes[0].send_signal(signal.SIGSTOP)
            ((code, err),) = finish([coordinator])
            assert code == 0, err[-3000:]
            nodes[0].send_signal(signal.SIGCONT)
            (paused_code, paused_err), (other_code, _) = finish(nodes)
        finally:
            for proc in (coordinator, *nodes):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        assert paused_code == 0, paused_err[-2000:]
        assert other_code == 0
        assert "asks this node to join again" in paused_err
        assert "batch 'b' has ended (done) without this node" in paused_err
    assert_every_item_once_and_verified(tmp_path, files, 2)
