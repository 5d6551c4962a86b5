"""Worker processes: downloaders spread over processes, processors in processes of their own.

So the GIL does not cap the pipeline, conveyor can host actors in other processes
(``download.processes``, ``processing.mode = "process"``). The StateKeeper stays the one
owner of state in the main process; everything crossing a process boundary is a typed
message in ``messages/`` encoded with msgpack, one frame per batch, over a
``multiprocessing`` pipe. Nothing is pickled but the start-up arguments.

Downloaders: a ``DownloaderHost`` (main process) starts one worker process that hosts
downloader actors. Their ``state_keeper`` and ``supervisor`` there are an ``Uplink`` that
frames what they send; a reader thread in the main process decodes the frames and tells
the StateKeeper (or, for ``ChildCrashed``, the Supervisor). Grants go the other way
through a ``RemoteRef``. When the process dies, the reader sees the pipe close and tells
the Supervisor, which re-dispatches the work of every downloader that lived there and
starts a new process.

Processors: a ``RemoteProcessor`` actor (main process) owns one processor process and
forwards each batch of files, waiting for the batch of results. If the process dies the
actor crashes, and the ordinary one-for-one restart gives the files to another processor.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.process
import signal
import threading
from typing import TYPE_CHECKING, Any

import pykka

from actors.child import ChildActor, ChildContext
from actors.control import tell
from actors.downloader import Downloader
from actors.processor import process_block, scratch_of
from messages import (
    Cancel,
    ChildCrashed,
    DownloadComplete,
    Grant,
    StartDownloader,
    decode_batch,
    encode_batch,
)
from messages.control import Batch, ProcessFiles, ProcessLost, Started
from messages.types import Lane
from runtime.core import cputime
from runtime.core.clock import Clock
from runtime.core.config import Config
from runtime.core.logs import configure_cli_logging, get_logger
from runtime.core.pluginload import load_pre_processor, load_processor
from runtime.core.transfer import RangeMemory

if TYPE_CHECKING:
    from runtime.core.transport import TransportFactory

__all__ = [
    "DownloaderHost",
    "RemoteProcessor",
    "RemoteRef",
    "Uplink",
    "downloader_process_main",
    "processor_process_main",
]

log = get_logger("remote")

_CONTEXT = multiprocessing.get_context("spawn")  # no fork of a process full of threads


class _Pipe:
    """One end of a pipe that several threads may send on."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.closed = False

    def send(self, messages: tuple[Any, ...]) -> bool:
        frame = encode_batch(messages)
        with self.lock:
            if self.closed:
                return False
            try:
                self.conn.send_bytes(frame)
            except (OSError, ValueError):
                self.closed = True
                return False
        return True

    def close(self, *, keep_reading: bool = False) -> None:
        """Say goodbye (an empty batch) and close.

        The goodbye matters: closing an fd that a reader thread is blocked on does not
        end the peer's read, so the peer would never see the end of the pipe. With
        ``keep_reading`` the connection stays open for a reader thread, which closes it
        when the peer hangs up.
        """
        with self.lock:
            if not self.closed:
                with contextlib.suppress(OSError, ValueError):
                    self.conn.send_bytes(encode_batch(()))
            self.closed = True
            if not keep_reading:
                with contextlib.suppress(OSError):
                    self.conn.close()


# -- the worker-process side ---------------------------------------------------------------


class Uplink:
    """In a worker process: stands in for the StateKeeper and the Supervisor."""

    def __init__(self, pipe: _Pipe) -> None:
        self.pipe = pipe

    def tell(self, message: Any) -> None:
        """Frame ``message`` (or a ``Batch`` of them) for the main process."""
        if not self.pipe.send(message.messages if isinstance(message, Batch) else (message,)):
            raise pykka.ActorDeadError("the main process is gone")


def _setup_child(log_level: str, log_format: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides about Ctrl-C
    configure_cli_logging(log_level, "json" if log_format == "auto" else log_format)


def downloader_process_main(
    conn: multiprocessing.connection.Connection,
    config: Config,
    transport_factory: TransportFactory,
    clock: Clock,
) -> None:
    """Entry point of a downloader worker process: serve until the pipe closes.

    ``clock`` is the pipeline's own clock, sent over (so it must pickle).
    """
    _setup_child(config.log.level, config.log.format)
    pipe = _Pipe(conn)
    uplink = Uplink(pipe)
    cancel = threading.Event()
    ranges = RangeMemory()  # hosts that cannot resume, for every downloader of this process
    local: dict[str, pykka.ActorRef[Any]] = {}
    try:
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError):
                break
            messages = decode_batch(frame)
            if not messages:  # the empty batch: the main process says goodbye
                break
            for message in messages:
                match message:
                    case Grant(worker=worker):
                        ref = local.get(worker)
                        if ref is not None:
                            tell(ref, message)
                    case StartDownloader(worker=worker, index=index, lane=lane):
                        local[worker] = Downloader.start(
                            child=ChildContext(
                                worker=worker, index=index, supervisor=uplink, state_keeper=uplink
                            ),
                            lane=lane,
                            config=config,
                            transport_factory=transport_factory,
                            clock=clock,
                            cancel=cancel,
                            ranges=ranges,
                        )
                    case Cancel(abort=True):
                        cancel.set()
                    case _:
                        log.warning("unexpected message", message=repr(message))
    finally:
        cancel.set()
        for ref in local.values():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)
        pipe.close()
        cputime.record_process("downloader_process")


def processor_process_main(
    conn: multiprocessing.connection.Connection, config: Config, worker: str
) -> None:
    """Entry point of a processor process: process batches until the pipe closes."""
    _setup_child(config.log.level, config.log.format)
    plugin = load_processor(config)
    pre = load_pre_processor(config)
    while True:
        try:
            frame = conn.recv_bytes()
        except (EOFError, OSError):
            return
        files = decode_batch(frame)
        if not files:  # the empty batch: goodbye
            cputime.record_process("processor_process")
            return
        replies = process_block(plugin, worker, files, pre, scratch_of(config))
        conn.send_bytes(encode_batch(replies))


# -- the main-process side -----------------------------------------------------------------


def _spawn(
    target: Any, args: tuple[Any, ...], name: str
) -> tuple[multiprocessing.connection.Connection, multiprocessing.process.BaseProcess]:
    """Start ``target(child_end, *args)`` in a new process; return our end and the process."""
    parent, child = _CONTEXT.Pipe(duplex=True)
    process = _CONTEXT.Process(target=target, args=(child, *args), name=name, daemon=True)
    process.start()
    child.close()
    return parent, process


class RemoteRef:
    """Stands in for a downloader actor that lives in a worker process."""

    def __init__(self, host: DownloaderHost) -> None:
        self.host = host

    def tell(self, message: Any) -> None:
        """Send a Grant (or Cancel) to the worker process."""
        if not self.host.pipe.send((message,)):
            raise pykka.ActorDeadError(f"worker process {self.host.index} is gone")


class DownloaderHost:
    """One downloader worker process, seen from the main process."""

    def __init__(
        self,
        *,
        index: int,
        config: Config,
        transport_factory: TransportFactory,
        clock: Clock,
        state_keeper: pykka.ActorRef[Any],
        supervisor: pykka.ActorRef[Any],
    ) -> None:
        self.index = index
        self.state_keeper = state_keeper
        self.supervisor = supervisor
        self.stopping = False
        parent, self.process = _spawn(
            downloader_process_main,
            (config, transport_factory, clock),
            f"conveyor-downloaders-{index}",
        )
        self.pipe = _Pipe(parent)
        self.ref = RemoteRef(self)
        self.reader = threading.Thread(
            target=self._read, name=f"conveyor-uplink-{index}", daemon=True
        )
        self.reader.start()

    @property
    def pid(self) -> int | None:
        """The worker process's pid."""
        return self.process.pid

    def start_downloader(self, worker: str, index: int, lane: Lane) -> RemoteRef:
        """Start a downloader actor in the worker process; return where to send its work."""
        self.pipe.send((StartDownloader(worker=worker, index=index, lane=lane),))
        return self.ref

    def cancel(self) -> None:
        """Abort the transfers running there (shutdown grace over)."""
        self.pipe.send((Cancel(reason="abort", abort=True),))

    def hang_up(self) -> None:
        """Say goodbye: the process ends its actors and exits (the reader sees it go)."""
        self.stopping = True
        self.pipe.close(keep_reading=True)

    def stop(self, timeout: float = 2.0) -> None:
        """Hang up and wait for the process; kill it if it lingers."""
        self.hang_up()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)

    def _read(self) -> None:
        conn = self.pipe.conn
        error = "the worker process exited"
        while True:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError, TypeError) as exc:
                error = f"the worker process exited ({type(exc).__name__})"
                break
            try:
                messages = decode_batch(frame)
            except ValueError as exc:  # CodecError: a broken peer
                error = f"bad frame from the worker process: {exc}"
                break
            crashes = [m for m in messages if isinstance(m, ChildCrashed)]
            rest = tuple(m for m in messages if not isinstance(m, ChildCrashed))
            if rest and not tell(
                self.state_keeper, Batch(messages=rest) if len(rest) > 1 else rest[0]
            ):
                return
            for crash in crashes:
                tell(self.supervisor, crash)
        with contextlib.suppress(OSError):
            conn.close()
        if not self.stopping:
            self.process.join(1.0)
            code = self.process.exitcode
            if code is not None and code < 0:
                error = f"the worker process was killed by signal {-code}"
            tell(self.supervisor, ProcessLost(host=self.index, error=error))


class RemoteProcessor(ChildActor):
    """A processor whose plugin runs in a process of its own."""

    kind = "processor"

    def __init__(
        self,
        *,
        child: ChildContext,
        config: Config,
    ) -> None:
        super().__init__(child=child)
        self.conn, self.process = _spawn(
            processor_process_main, (config, child.worker), f"conveyor-{child.worker}"
        )

    def on_receive(self, message: Any) -> Any:
        """Forward a batch of files; relay the results."""
        match message:
            case Started():
                return None  # (its plugins are built in its process)
            case ProcessFiles(files=files):
                pass
            case DownloadComplete():
                files = (message,)
            case _:
                log.warning("unexpected message", actor=self.worker, message=repr(message))
                return
        try:
            self.conn.send_bytes(encode_batch(files))
            replies = decode_batch(self.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"processor process {self.process.pid} died: {exc!r}") from exc
        tell(self.state_keeper, Batch(messages=replies))

    def on_stop(self) -> None:
        """End the process."""
        self._close()
        super().on_stop()

    def cleanup(self) -> None:
        """End the process after a crash."""
        self._close()

    def _close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(encode_batch(()))
        with contextlib.suppress(OSError):
            self.conn.close()
        self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
