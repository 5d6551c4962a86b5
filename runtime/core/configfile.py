"""Loading a configuration: a TOML file, the environment and command-line overrides onto
the sections of ``runtime.core.config``, with every value checked.

An unknown section or key, or a value of the wrong type, raises ``ConfigError`` naming
where it was set — the file and key, the flag, or the ``CONVEYOR_<SECTION>_<KEY>``
variable — and what was expected. Relative paths are resolved against the directory of
the config file, so a config works from any cwd.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.core.config import (
    MAX_CONCURRENCY,
    MAX_DOWNLOADERS,
    MAX_PROCESSORS,
    CircuitConfig,
    ClusterConfig,
    Config,
)
from runtime.core.errors import ConfigError
from runtime.core.netguard import parse_networks

__all__ = ["build_config", "config_from_flags", "load_config", "with_config_dir_on_plugin_path"]

_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("input", "format"): ("auto", "json", "ndjson"),
    ("output", "if_exists"): ("reuse", "skip", "overwrite"),
    ("output", "keep"): ("all", "failed", "none"),
    ("log", "format"): ("auto", "console", "json"),
    ("log", "level"): ("debug", "info", "warning", "error"),
    ("processing", "mode"): ("thread", "process"),
    ("download", "trust_env"): ("auto", "yes", "no"),
    ("download", "engine"): ("requests", "curl"),
    ("state", "backend"): ("sqlite", "memory"),
}


def _check_downloaders(download: Mapping[str, Any], where: Where) -> None:
    """Refuse ``concurrency`` together with both ``workers`` and ``mailbox`` (and, with
    the requests engine, a ``workers`` that differs from it: there they are one number)."""
    given = [k for k in ("concurrency", "workers", "mailbox") if download.get(k)]
    if len(given) == 3:
        raise ConfigError(
            f"{_both(where, given)} are all set: download.concurrency decides the other "
            "two; give concurrency, or workers and mailbox, not all three"
        )
    c, w = download.get("concurrency"), download.get("workers")
    if download.get("engine") == "requests" and c and w and c != w:
        raise ConfigError(
            f'{_both(where, ["concurrency", "workers"])} differ: with engine = "requests" '
            "each downloader runs one transfer, so they are the same number; give one of them"
        )


def _both(where: Where, keys: Sequence[str]) -> str:
    """``download.a, download.b and download.c`` with who set each: a file named once when
    it set them all (``conveyor.toml: download.a and download.b``)."""
    named = [where("download", k) for k in keys]
    sources = {n.rpartition(": ")[0] for n in named}
    if len(sources) == 1 and "" not in sources:
        prefix = sources.pop() + ": "
        named = [named[0]] + [n.removeprefix(prefix) for n in named[1:]]
    return ", ".join(named[:-1]) + " and " + named[-1]


Where = Callable[[str, str], str]
"""Names who set ``section.key``: ``file: section.key`` or the environment variable."""


def _tname(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        dict: "table",
        list: "array",
    }.get(type(value), type(value).__name__)


def _section_class(name: str) -> type[Any]:
    hints = typing.get_type_hints(Config)
    cls: type[Any] = hints[name]
    return cls


def _build_section(name: str, values: Mapping[str, Any], source: str, where: Where) -> Any:
    cls = _section_class(name)
    hints = _keys(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"{source}: unknown key {name}.{key}; known keys in [{name}]: " + ", ".join(hints)
            )
        kwargs[key] = _coerce(value, hints[key], where(name, key))
    return cls(**kwargs)


def _keys(cls: type) -> dict[str, Any]:
    """A section's keys and their types: its dataclass fields (not its class attributes)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    expected = {int: "integer", float: "float", str: "string", bool: "boolean"}.get(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if hint in (int, str, bool, float):
        if type(value) is not hint:
            raise ConfigError(f"{where} must be {expected}, got {_tname(value)} {value!r}")
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be an array of strings, got {_tname(value)}")
        return tuple(value)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a table, got {_tname(value)}")
        return dict(value)
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in this module


def _parse_env(raw: str, hint: Any, where: str) -> Any:
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            number = float(raw)
            if not math.isfinite(number):
                raise ConfigError(f"{where} must be a finite number, got {raw!r}")
            return number
    except ValueError:
        name = {bool: "boolean", int: "integer", float: "float"}[hint]
        raise ConfigError(f"{where} must be {name}, got {raw!r}") from None
    if hint is str:
        return raw
    if typing.get_origin(hint) is tuple:
        return tuple(p for p in raw.split(os.pathsep) if p)
    raise ConfigError(f"{where} is a table: set it in the config file")


def _apply_environ(
    merged: dict[str, dict[str, Any]], environ: Mapping[str, str], sections: Mapping[str, Any]
) -> dict[tuple[str, str], str]:
    """Apply ``CONVEYOR_<SECTION>_<KEY>`` variables; return which keys they set, and how."""
    applied: dict[tuple[str, str], str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith("CONVEYOR_"):
            continue
        section, _, key = var[len("CONVEYOR_") :].lower().partition("_")
        if section not in sections:
            continue  # not ours: CONVEYOR_ is a common prefix
        hints = _keys(_section_class(section))
        if key not in hints:
            raise ConfigError(
                f"environment variable {var}: unknown key {section}.{key}; known keys: "
                + ", ".join(hints)
            )
        who = f"environment variable {var} ({section}.{key})"
        merged.setdefault(section, {})[key] = _parse_env(raw, hints[key], who)
        applied[(section, key)] = who
    return applied


def _apply_overrides(
    merged: dict[str, dict[str, Any]],
    overrides: Mapping[str, tuple[str, str]],
    sections: Mapping[str, Any],
) -> dict[tuple[str, str], str]:
    """Apply ``section.key`` values given as text on the command line; return who set what."""
    applied: dict[tuple[str, str], str] = {}
    for dotted, (raw, who) in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in sections:
            raise ConfigError(
                f"{who}: unknown section {section!r}; expected one of " + ", ".join(sections)
            )
        hints = _keys(_section_class(section))
        if key not in hints:
            raise ConfigError(
                f"{who}: unknown key {section}.{key}; known keys in [{section}]: "
                + ", ".join(hints)
            )
        merged.setdefault(section, {})[key] = _parse_env(raw, hints[key], who)
        applied[(section, key)] = who
    return applied


def _check_values(config: Config, source: str, where: Where) -> Config:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(
                f"{where(section, key)} must be one of {', '.join(map(repr, choices))}, "
                f"got {value!r}"
            )
    positive = [
        ("retry", "max_attempts"),
        ("download", "max_redirects"),
        ("download", "stall_window"),
        ("download", "timeout"),
        ("download", "large_workers"),
        ("download", "chunk_size"),
        ("processing", "workers"),
        ("state", "persist_interval"),
        ("download", "connect_timeout"),
        ("download", "read_timeout"),
        ("service", "webhook_timeout"),
        ("service", "webhook_backoff"),
        ("service", "max_body_bytes"),
        ("service", "max_items"),
        ("service", "max_connections"),
        ("service", "events_kept"),
        ("service", "progress_interval"),
        ("cluster", "node_timeout"),
        ("cluster", "max_deliveries"),
    ]
    for section, key in positive:
        if getattr(getattr(config, section), key) <= 0:
            raise ConfigError(f"{where(section, key)} must be greater than 0")
    nonnegative = [
        ("download", "concurrency"),
        ("download", "workers"),
        ("download", "mailbox"),
        ("supervisor", "max_restarts"),
        ("supervisor", "restart_window"),
        ("supervisor", "shutdown_grace"),
        ("processing", "backlog"),
        ("simulate", "latency"),
        ("simulate", "min_size"),
        ("simulate", "throttle_retry_after"),
        ("download", "per_host"),
        ("download", "processes"),
        ("download", "max_size"),
        ("download", "min_speed"),
        ("download", "large_threshold"),
        ("retry", "backoff_initial"),
        ("retry", "backoff_max"),
        ("retry", "max_retry_after"),
        ("circuit", "reset_timeout"),
        ("circuit", "give_up_after"),
        ("circuit", "failure_threshold"),
        ("supervisor", "job_timeout"),
        ("service", "max_running_jobs"),
        ("service", "port"),
    ]
    for section, key in nonnegative:
        if getattr(getattr(config, section), key) < 0:
            raise ConfigError(f"{where(section, key)} must not be negative")
    for key, most in (("concurrency", MAX_CONCURRENCY), ("workers", MAX_DOWNLOADERS)):
        if getattr(config.download, key) > most:
            raise ConfigError(f"{where('download', key)} must be at most {most}")
    if config.processing.workers > MAX_PROCESSORS:
        raise ConfigError(f"{where('processing', 'workers')} must be at most {MAX_PROCESSORS}")
    config = _check_circuit(config, where)
    try:
        parse_networks(config.download.allow_networks, where("download", "allow_networks"))
        parse_networks(config.service.allow_networks, where("service", "allow_networks"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.service.port > 65535:
        raise ConfigError(f"{where('service', 'port')} must be at most 65535")
    if not 0.0 <= config.simulate.failure_rate <= 1.0:
        raise ConfigError(f"{where('simulate', 'failure_rate')} must be between 0 and 1")
    if config.simulate.max_size < config.simulate.min_size:
        raise ConfigError(f"{where('simulate', 'max_size')} must be at least simulate.min_size")
    _check_cluster(config, where)
    if config.output.keep != "all" and config.output.if_exists == "skip":
        raise ConfigError(
            f"output.keep = {config.output.keep!r} (from {where('output', 'keep')}) and "
            f"output.if_exists = 'skip' (from {where('output', 'if_exists')}) do not go "
            "together: a file found in "
            "place would be recorded without being processed (after an interruption it is "
            "one that was downloaded but not yet processed); use if_exists = 'reuse'"
        )
    for key in ("processor", "pre_processor", "post_processor"):
        spec = getattr(config.processing, key)
        module, sep, attr = spec.partition(":")
        if key == "pre_processor" and not spec:
            continue
        if not (sep and module and attr):
            raise ConfigError(
                f"{where('processing', key)} must be 'package.module:Class', got {spec!r}"
            )
    return config


MIN_NODE_TIMEOUT = 2.0
"""Shortest ``cluster.node_timeout``: two of a node's beats."""


def _check_cluster(config: Config, where: Where) -> None:
    """A Redis url that redis-py takes, a batch name a node can give, and nothing the
    nodes cannot do yet (a processor: the files are on the nodes)."""
    c = config.cluster
    if not c.redis:
        if c != ClusterConfig():  # (a [cluster] that would silently be a local run)
            raise ConfigError(
                f"{where('cluster', 'redis')} is empty while other cluster keys are set: give "
                "the Redis url to run as a cluster's coordinator, or drop [cluster]"
            )
        return
    if c.node_timeout < MIN_NODE_TIMEOUT:
        raise ConfigError(
            f"{where('cluster', 'node_timeout')} must be at least {MIN_NODE_TIMEOUT:g} s (a "
            f"node beats every second), got {c.node_timeout:g}"
        )
    if not c.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"{where('cluster', 'redis')} must be a redis://, rediss:// or unix:// url, "
            f"got {c.redis!r}"
        )
    from runtime.core.streams import valid_node_name

    if c.name and not valid_node_name(c.name):
        raise ConfigError(
            f"{where('cluster', 'name')} must be ASCII letters, digits, '.', '_' or '-' "
            f"(64 at most), got {c.name!r}"
        )
    p = config.processing
    if not p.skipped:
        key = "pre_processor" if p.pre_processor else "processor"
        raise ConfigError(
            f"{where('processing', key)}: a cluster runs no processor yet (the files stay on "
            "the nodes that downloaded them); leave processing.processor and "
            "processing.pre_processor unset with cluster.redis"
        )
    if config.output.keep != "all":
        raise ConfigError(
            f"{where('output', 'keep')}: a cluster keeps every file on its node (output.keep "
            "must be 'all' with cluster.redis)"
        )


def _check_circuit(config: Config, where: Where) -> Config:
    """Check the breaker's window and map the old ``failure_threshold`` onto it."""
    c = config.circuit
    if c.failure_threshold:
        defaults = CircuitConfig()
        if (c.window, c.min_requests, c.failure_rate) != (
            defaults.window,
            defaults.min_requests,
            defaults.failure_rate,
        ):
            raise ConfigError(
                f"{where('circuit', 'failure_threshold')} cannot be combined with "
                "circuit.window, circuit.min_requests or circuit.failure_rate: the breaker "
                "now judges the failure rate of a window; drop failure_threshold"
            )
        n = c.failure_threshold  # N in a row == more than (N-1)/N of the last N
        c = dataclasses.replace(c, window=n, min_requests=n, failure_rate=(n - 1) / n)
        return dataclasses.replace(config, circuit=c)
    if c.window < 1:
        raise ConfigError(f"{where('circuit', 'window')} must be greater than 0")
    if not 1 <= c.min_requests <= c.window:
        raise ConfigError(
            f"{where('circuit', 'min_requests')} must be between 1 and circuit.window ({c.window})"
        )
    if not 0.0 <= c.failure_rate < 1.0:
        raise ConfigError(
            f"{where('circuit', 'failure_rate')} must be at least 0 and below 1 (the "
            "breaker opens when more than this share of the window failed)"
        )
    return config


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolve(value: str) -> str:
        return str((base / value).resolve()) if value else value

    return dataclasses.replace(
        config,
        input=dataclasses.replace(config.input, path=resolve(config.input.path)),
        output=dataclasses.replace(config.output, dir=resolve(config.output.dir)),
        state=dataclasses.replace(config.state, dir=resolve(config.state.dir)),
        service=dataclasses.replace(config.service, data_dir=resolve(config.service.data_dir)),
        processing=dataclasses.replace(
            config.processing,
            manifest=resolve(config.processing.manifest),
            plugin_path=tuple(resolve(p) for p in config.processing.plugin_path),
        ),
    )


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[str, str]] | None = None,
    *,
    need_input: bool = True,
) -> Config:
    """Read a TOML config file, apply environment overrides, check it.

    Args:
        path: the TOML file.
        environ: variables to read ``CONVEYOR_*`` overrides from (default ``os.environ``).
        overrides: command-line values (see ``Config.from_mapping``): over the file,
            under the environment.
        need_input: whether ``input.path`` must be set (not for the job service).

    Raises:
        ConfigError: the file is missing, not TOML, or has a bad key or value.
    """
    file = Path(path)
    try:
        with file.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    config = Config.from_mapping(
        data,
        source=str(file),
        base_dir=file.resolve().parent,
        environ=os.environ if environ is None else environ,
        overrides=overrides,
    )
    if need_input and not config.input.path:
        raise ConfigError(f"{file}: input.path is required (a JSON or NDJSON list of files)")
    return with_config_dir_on_plugin_path(config, file.resolve().parent)


def config_from_flags(
    overrides: Mapping[str, tuple[str, str]], environ: Mapping[str, str] | None = None
) -> Config:
    """A config from command-line values alone (``run --input FILE`` without a file).

    Paths are relative to the current directory. Unless set, the state lives next to the
    output directory: ``<output.dir>.state``.

    Raises:
        ConfigError: a bad value, or no ``input.path``.
    """
    env = os.environ if environ is None else environ
    config = Config.from_mapping(
        {}, source="command line", base_dir=Path.cwd(), environ=env, overrides=overrides
    )
    if not config.input.path:
        raise ConfigError(
            "give a config file or --input FILE (or --files FILE): a JSON or NDJSON list of files"
        )
    state_set = "state.dir" in overrides or "CONVEYOR_STATE_DIR" in env
    if not state_set:
        config = dataclasses.replace(
            config, state=dataclasses.replace(config.state, dir=config.output.dir + ".state")
        )
    return config


def with_config_dir_on_plugin_path(config: Config, folder: Path) -> Config:
    """Search ``folder`` (a config file's directory) for plugins first."""
    path = (str(folder), *(p for p in config.processing.plugin_path if p != str(folder)))
    return dataclasses.replace(
        config, processing=dataclasses.replace(config.processing, plugin_path=path)
    )


def build_config(
    cls: type[Config],
    data: Mapping[str, Any],
    *,
    source: str,
    base_dir: Path | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, tuple[str, str]] | None,
) -> Config:
    """``Config.from_mapping`` (see there)."""
    sections = {f.name: f.type for f in dataclasses.fields(cls)}
    merged: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if name not in sections:
            raise ConfigError(
                f"{source}: unknown section [{name}]; expected one of "
                + ", ".join(f"[{s}]" for s in sections)
            )
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table, got {_tname(value)}")
        merged[name] = dict(value)
    setters = _apply_overrides(merged, overrides or {}, sections)
    setters.update(_apply_environ(merged, environ or {}, sections))

    def where(section: str, key: str) -> str:
        """Who set a key, for error messages: the file, a flag or a variable."""
        return setters.get((section, key)) or f"{source}: {section}.{key}"

    built = {name: _build_section(name, merged.get(name, {}), source, where) for name in sections}
    _check_downloaders(merged.get("download", {}), where)
    config = cls(**built)
    return _resolve_paths(_check_values(config, source, where), base_dir or Path.cwd())
