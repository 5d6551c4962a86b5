"""Typed configuration: its sections, every key with its default and meaning.

Every key has a default except ``input.path`` (and even that may be left out when the
embedding API submits items itself). Reading one from a TOML file, the environment and
the command line, with every value checked, is ``runtime.core.configfile``'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from runtime.core.netguard import DOWNLOAD_SETTING, SERVICE_SETTING

NO_OP_PROCESSORS = frozenset(
    {"runtime.plugins:NullProcessor", "runtime.core.plugins:NullProcessor"}
)
"""Processor specs that do nothing: the processing stage is skipped for them."""

__all__ = [
    "CircuitConfig",
    "ClusterConfig",
    "Config",
    "DownloadConfig",
    "InputConfig",
    "LogConfig",
    "OutputConfig",
    "ProcessingConfig",
    "RetryConfig",
    "ServiceConfig",
    "ServiceDownloadConfig",
    "SimulateConfig",
    "StateConfig",
    "SupervisorConfig",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class InputConfig:
    """``[input]``: where the list of files comes from."""

    path: str = ""
    """JSON array or NDJSON of ``{"id", "name", "url", "sha256"?, "size"?}``."""
    format: str = "auto"
    """``auto`` (by the first character), ``json`` or ``ndjson``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputConfig:
    """``[output]``: where the files land."""

    dir: str = "downloads"
    """Directory for the final files; nothing is ever written outside it."""
    if_exists: str = "reuse"
    """A final file already in place: ``reuse`` (verify and count as completed),
    ``skip`` (record as skipped) or ``overwrite`` (download again)."""
    keep: str = "all"
    """Which files stay once their item is recorded: ``all``; ``failed`` (a file whose
    processing or post-processing failed stays, completed ones are deleted); ``none``
    (every file is deleted once its outcome is recorded and committed: the point is the
    result, and disk holds only what is in flight). A deleted file's item stays completed
    and is not downloaded again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    """``[state]``: the store that makes runs resumable."""

    dir: str = ".conveyor"
    """Directory of ``state.sqlite3`` (and by default the manifest)."""
    persist_interval: float = 0.5
    """Seconds between group commits of status changes."""
    backend: str = "sqlite"
    """``sqlite``: the state in ``state.sqlite3``, so a run resumes where it stopped.
    ``memory``: nothing is kept between runs (throw-away runs and tests); the manifest is
    still written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DownloadConfig:
    """``[download]``: the downloader actors."""

    allow_networks_setting: ClassVar[str] = DOWNLOAD_SETTING
    """The setting a refusal of the network guard tells the user to change (not a key)."""

    concurrency: int = 0
    """Transfers at once, over all downloaders of the normal lane (like ``aria2c -j`` and
    ``curl --parallel-max``); ``workers`` and ``mailbox`` follow from it. 0: the engine's
    default, 256 with curl, 8 with requests. ``per_host`` still limits each host."""
    workers: int = 0
    """Downloader actors of the normal lane (0: from ``concurrency`` — one with the curl
    engine, whose downloader runs all its transfers at once; ``concurrency`` with
    requests, one transfer each)."""
    mailbox: int = 0
    """Most items leased to one downloader at a time; with the curl engine, also how many
    it transfers at once (0: from ``concurrency``; 2 with requests)."""
    connect_timeout: float = 10.0
    """Seconds to establish a connection."""
    read_timeout: float = 30.0
    """Seconds without receiving a byte before the attempt fails."""
    chunk_size: int = 262144
    """Bytes read from the socket per write."""
    progress_interval: float = 0.5
    """Least seconds between two progress reports of one transfer."""
    user_agent: str = "conveyor/0.1"
    """User-Agent header sent with every request."""
    per_host: int = 4
    """Most concurrent downloads from one host (0: no limit)."""
    max_size: int = 0
    """Largest body accepted, counted on decoded bytes (0: no limit)."""
    max_redirects: int = 10
    """Most redirects followed for one request."""
    min_speed: int = 1024
    """Bytes per second below which a transfer counts as stalling."""
    stall_window: float = 60.0
    """Seconds a transfer may stay below ``min_speed`` before it is aborted and retried."""
    timeout: float = 3600.0
    """Seconds one attempt may take at most, plus the expected size over ``min_speed``."""
    large_threshold: int = 104857600
    """Items known to be larger than this (bytes) go to the large-file lane."""
    large_workers: int = 1
    """Downloaders of the large-file lane."""
    trust_env: str = "auto"
    """Whether requests reads proxies, .netrc and CA bundles from the environment for each
    request: ``yes``, ``no``, or ``auto`` (yes only when such settings exist; reading them
    costs about a quarter of requests' CPU per request)."""
    engine: str = "curl"
    """How downloads are done: ``curl`` (libcurl's multi interface: each downloader runs
    its whole mailbox of transfers at once) or ``requests`` (one transfer at a time per
    downloader, with a requests session)."""
    processes: int = 0
    """Worker processes the downloaders are spread over (0: threads of the main process)."""
    block_private_networks: bool = False
    """Refuse to connect to loopback, private, link-local and multicast addresses (checked
    for every connection, redirects included, with the address the name resolved to).
    The job service always turns this on."""
    allow_networks: tuple[str, ...] = ()
    """Networks (CIDR, e.g. ``127.0.0.1/32``) allowed even when ``block_private_networks``
    is on."""

    def __post_init__(self) -> None:
        """Fill in ``concurrency``, ``workers`` and ``mailbox`` where they are 0."""
        if min(self.concurrency, self.workers, self.mailbox) < 0:
            return  # refused by the config's checks, naming the key
        concurrency, workers, mailbox = derive_downloaders(self)
        object.__setattr__(self, "concurrency", concurrency)
        object.__setattr__(self, "workers", workers)
        object.__setattr__(self, "mailbox", mailbox)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceDownloadConfig(DownloadConfig):
    """``[download]`` as the job service runs its jobs: the same keys, but ``allow_networks``
    comes from ``service.allow_networks`` — the setting the network guard's refusals
    name. (Built by the service, never read from a file.)"""

    allow_networks_setting: ClassVar[str] = SERVICE_SETTING

    @classmethod
    def of(cls, download: DownloadConfig) -> ServiceDownloadConfig:
        """``download``'s values as a service job's."""
        fields = dataclasses.fields(DownloadConfig)
        return cls(**{f.name: getattr(download, f.name) for f in fields})


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    """``[retry]``: how transient failures are retried."""

    max_attempts: int = 3
    """Attempts per item before a transient failure becomes terminal."""
    backoff_initial: float = 1.0
    """Seconds before the first retry; doubles with every attempt, with jitter."""
    backoff_max: float = 60.0
    """Longest backoff between two attempts."""
    max_retry_after: float = 300.0
    """Longest ``Retry-After`` honoured; a server asking for more fails the item
    ``rate_limited``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitConfig:
    """``[circuit]``: the per-host circuit breaker."""

    window: int = 50
    """How many of a host's latest requests its breaker judges (a sliding window)."""
    min_requests: int = 20
    """Requests the window must hold before the breaker may open."""
    failure_rate: float = 0.5
    """The breaker opens when more than this share of the window failed (0 to 1)."""
    failure_threshold: int = 0
    """Deprecated: N opens the breaker after N failures in a row, as before (the same as
    ``window = min_requests = N`` and ``failure_rate = (N-1)/N``); 0: not used."""
    reset_timeout: float = 30.0
    """Seconds an open breaker waits before one probe request (half-open)."""
    give_up_after: int = 3
    """Failed probes in a row after which the host counts as down for this run: its
    remaining items fail ``host_down`` without a request (0: keep probing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessingConfig:
    """``[processing]``: what happens to a file once it is downloaded."""

    processor: str = "runtime.plugins:NullProcessor"
    """``package.module:Class`` of a ``BaseProcessor``. The default does nothing, and costs
    nothing: with it no processor runs and each downloaded file goes straight
    to the post-processor, its sha256 the one computed while downloading. Use
    ``runtime.plugins:ChecksumProcessor`` to read every file back and verify it."""
    pre_processor: str = ""
    """``package.module:Class`` of a ``BasePreProcessor``, run on each downloaded file just
    before the processor, in the same processor actor (empty: none, at no cost)."""
    post_processor: str = "runtime.plugins:JsonlManifest"
    """``package.module:Class`` of a ``BasePostProcessor``."""
    workers: int = 2
    """Number of processor actors."""
    mode: str = "thread"
    """``thread`` (in the main process) or ``process`` (each processor in its own process,
    files and results crossing as msgpack)."""
    backlog: int = 0
    """Most downloaded files waiting for processing before downloads pause (0: 64 x workers,
    so each processor gets full blocks of 32)."""
    manifest: str = ""
    """Manifest path for the JSONL post-processor (default ``<state.dir>/manifest.jsonl``)."""
    processor_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the processor's constructor."""
    pre_processor_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the pre-processor's constructor."""
    post_processor_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the post-processor's constructor."""
    plugin_path: tuple[str, ...] = ()
    """Directories where plugin modules are found, relative to the config file (whose own
    directory is always searched first); from the environment: separated by ``:``."""

    @property
    def skipped(self) -> bool:
        """Whether the processing stage is skipped (no pre-processor, and a processor
        that does nothing)."""
        return self.processor in NO_OP_PROCESSORS and not self.pre_processor


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorConfig:
    """``[supervisor]``: restarts and shutdown."""

    max_restarts: int = 5
    """Child restarts tolerated within ``restart_window`` before the run ends with an error."""
    restart_window: float = 60.0
    """Seconds over which restarts are counted."""
    shutdown_grace: float = 10.0
    """Seconds in-flight items get to finish after SIGINT/SIGTERM."""
    job_timeout: float = 0.0
    """Seconds the whole run may take before it stops gracefully (0: no limit)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulateConfig:
    """``[simulate]``: the offline transport used by ``run --simulate-downloads``."""

    seed: int = 0
    """Seed of the simulated sizes, latencies and failures."""
    min_size: int = 1024
    """Smallest simulated body in bytes."""
    max_size: int = 65536
    """Largest simulated body in bytes."""
    latency: float = 0.0
    """Seconds each simulated request takes before its first byte."""
    failure_rate: float = 0.0
    """Probability (0..1) that an attempt fails with a simulated 503."""
    throttle_hosts: tuple[str, ...] = ()
    """Hosts (as written in the urls) that answer every request with a 429."""
    throttle_retry_after: float = 60.0
    """The ``Retry-After`` seconds of those 429 answers."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    """``[service]``: the job service, ``python -m runtime serve``."""

    data_dir: str = "conveyor-service"
    """Directory of the service's job database and of every job's files and state."""
    host: str = "127.0.0.1"
    """Address to listen on; any other than loopback needs a ``token``."""
    port: int = 8080
    """Port to listen on (0: any free port, printed at start)."""
    token: str = ""
    """Bearer token every API call must carry (set it with ``CONVEYOR_SERVICE_TOKEN``
    rather than in a file); empty: no token, allowed on a loopback address only."""
    max_running_jobs: int = 0
    """Jobs that download at once; the others wait ``queued`` (0: one per CPU, at least 2)."""
    allow_networks: tuple[str, ...] = ()
    """Networks (CIDR) jobs and webhooks may reach even though they are loopback or
    private (the service refuses such addresses otherwise)."""
    processors: tuple[str, ...] = ()
    """Processors a job's ``options.processor`` may choose, besides ``processing.processor``
    (``package.module:Class``)."""
    webhook_secret: str = ""
    """Key of the webhooks' HMAC signature (``CONVEYOR_SERVICE_WEBHOOK_SECRET``); a job
    with a ``callback_url`` is refused while it is empty."""
    webhook_timeout: float = 3600.0
    """Seconds a webhook delivery is retried for before it is given up."""
    webhook_backoff: float = 1.0
    """First wait between delivery attempts, doubling up to 300 s."""
    max_body_bytes: int = 67108864
    """Largest request body accepted (413 beyond)."""
    max_items: int = 1000000
    """Most items in one job (413 beyond)."""
    max_connections: int = 200
    """Most requests and event streams served at once (429 beyond)."""
    events_kept: int = 100000
    """Events kept per job for replay; a client asking for older ones is told to re-read."""
    progress_interval: float = 0.5
    """Least seconds between two progress events of a job."""
    public_metrics: bool = False
    """Serve ``/metrics`` without the token."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """``[cluster]``: one batch over many machines (see the README's Cluster)."""

    redis: str = ""
    """``redis://`` (or ``rediss://``) url of the Redis that carries the messages between
    this coordinator and its nodes; empty: no cluster."""
    name: str = ""
    """The batch's name, which nodes join (``worker --batch``); empty: from the state
    directory's path."""
    node_timeout: float = 10.0
    """Seconds a node may stay silent before it counts as lost: its items go back to
    pending and are granted to the others."""
    local_downloads: bool = True
    """Whether the coordinator downloads too, beside its nodes."""
    max_deliveries: int = 3
    """Times an item may be on a node that is lost before it fails ``node_lost`` (an
    item that kills every node it reaches does not take them all down in turn)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """``[log]``: how the CLI logs (a library host configures its own logging)."""

    level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    format: str = "auto"
    """``auto`` (console on a TTY, JSON otherwise), ``console`` or ``json``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration of one run."""

    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    state: StateConfig = field(default_factory=StateConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit: CircuitConfig = field(default_factory=CircuitConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def manifest_path(self) -> Path:
        """Where the JSONL manifest goes."""
        return Path(self.processing.manifest or Path(self.state.dir) / "manifest.jsonl")

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "<config>",
        base_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        overrides: Mapping[str, tuple[str, str]] | None = None,
    ) -> Config:
        """Build a config from a parsed TOML-like mapping.

        Args:
            data: sections and keys, as ``tomllib`` returns them.
            source: name used in error messages (the file path).
            base_dir: directory that relative paths are resolved against (default: cwd).
            environ: environment for ``CONVEYOR_<SECTION>_<KEY>`` overrides (default: none).
            overrides: ``{"section.key": (text, who)}`` from the command line, applied
                over ``data`` and under ``environ``; ``who`` names the flag in errors.

        Raises:
            ConfigError: unknown section or key, wrong type, invalid value.
        """
        from runtime.core.configfile import build_config  # (it builds these classes)

        return build_config(
            cls, data, source=source, base_dir=base_dir, environ=environ, overrides=overrides
        )


DEFAULT_CONCURRENCY = {"curl": 256, "requests": 8}
"""``download.concurrency`` when it is 0, by engine (see benchmarks/README.md: W4)."""
CURL_TRANSFERS_PER_DOWNLOADER = 1024
"""Most transfers one curl downloader runs: past it, ``concurrency`` is split among
several (each more costs GIL contention, so one is the rule)."""
MAX_CONCURRENCY = 4096
"""Most transfers at once (each holds a socket and a file; past a few thousand, the
process's descriptor limit and the remote hosts give out first)."""
MAX_DOWNLOADERS = 512
"""Most downloader actors (each is a thread)."""
MAX_PROCESSORS = 256
"""Most processor actors (each a thread, or a process with ``mode = "process"``)."""
REQUESTS_MAILBOX = 2
"""Items a requests downloader holds: the one it transfers and the next."""


def derive_downloaders(d: DownloadConfig) -> tuple[int, int, int]:
    """``(concurrency, workers, mailbox)`` of ``d``: the ones left at 0 follow from the
    others (see ``DownloadConfig.concurrency``)."""
    concurrency = d.concurrency or DEFAULT_CONCURRENCY.get(d.engine, 8)
    workers, mailbox = d.workers, d.mailbox
    if d.engine != "curl":  # one transfer at a time per downloader
        workers = workers or concurrency
        return workers, workers, mailbox or REQUESTS_MAILBOX
    if workers and mailbox:
        concurrency = workers * mailbox
    elif workers:
        mailbox = -(-concurrency // workers)
    elif mailbox:
        workers = -(-concurrency // mailbox)
    else:
        workers = -(-concurrency // CURL_TRANSFERS_PER_DOWNLOADER)
        workers = max(workers, d.processes)  # every worker process runs one at least
        mailbox = -(-concurrency // workers)
    return concurrency, workers, mailbox
