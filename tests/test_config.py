"""Config loading: defaults, overrides, and errors that name file, key and type."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from runtime.core.config import Config
from runtime.core.configfile import load_config
from runtime.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    return path


def test_defaults_apply_and_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    """Only input.path is needed; relative paths are taken from the config's directory."""
    config = load_config(write(tmp_path, '[input]\npath = "files.json"\n'), environ={})
    assert config.input.path == str(tmp_path / "files.json")
    assert config.output.dir == str(tmp_path / "downloads")
    assert config.state.dir == str(tmp_path / ".conveyor")
    d = config.download  # one curl downloader runs every transfer
    assert (d.engine, d.concurrency, d.workers, d.mailbox) == ("curl", 256, 1, 256)
    assert config.state.persist_interval == 0.5
    assert config.processing.workers == 2
    assert config.manifest_path == tmp_path / ".conveyor" / "manifest.jsonl"


def test_documented_keys_are_accepted(tmp_path: Path) -> None:
    """The keys the README promises parse with the values given."""
    text = """
[input]
path = "files.json"
[output]
dir = "out"
[state]
dir = "st"
persist_interval = 1
[download]
workers = 3
mailbox = 1
[processing]
processor = "runtime.plugins:NullProcessor"
post_processor = "runtime.plugins:JsonlManifest"
workers = 4
"""
    config = load_config(write(tmp_path, text), environ={})
    assert config.state.persist_interval == 1.0
    assert (config.download.workers, config.download.mailbox) == (3, 1)
    assert config.processing.processor == "runtime.plugins:NullProcessor"


def test_wrong_type_names_file_key_and_expected_type(tmp_path: Path) -> None:
    """A string where an integer belongs is reported with file, key and type."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nworkers = "eight"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert str(path) in message
    assert "download.workers" in message
    assert "must be integer" in message
    assert "'eight'" in message


def test_unknown_key_is_an_error_listing_known_keys(tmp_path: Path) -> None:
    """A typo is not silently ignored."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nworker = 3\n')
    with pytest.raises(ConfigError, match=r"unknown key download\.worker; known keys") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    """A misspelt section is reported."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[downlaod]\nworkers = 3\n')
    with pytest.raises(ConfigError, match=r"unknown section \[downlaod\]"):
        load_config(path, environ={})


def test_missing_input_path_is_an_error(tmp_path: Path) -> None:
    """The one required key."""
    with pytest.raises(ConfigError, match=r"input\.path is required"):
        load_config(write(tmp_path, "[download]\nworkers = 2\n"), environ={})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    """A syntax error points at the file."""
    path = write(tmp_path, "[input\npath=")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path, environ={})
    assert str(path) in str(info.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A config that does not exist."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[download]\nworkers = -1\n", "download.workers must not be negative"),
        (
            "[download]\nconcurrency = 8\nworkers = 2\nmailbox = 4\n",
            "conveyor.toml: download.concurrency, download.workers and download.mailbox are "
            "all set",
        ),
        (
            '[download]\nengine = "requests"\nconcurrency = 20\nworkers = 4\n',
            "conveyor.toml: download.concurrency and download.workers differ",
        ),
        ("[download]\nconcurrency = 100000\n", "download.concurrency must be at most 4096"),
        ("[download]\nworkers = 1000\n", "download.workers must be at most 512"),
        ('[output]\nif_exists = "maybe"\n', "output.if_exists must be one of"),
        (
            '[processing]\nprocessor = "nocolon"\n',
            "processing.processor must be 'package.module:Class'",
        ),
        ("[simulate]\nfailure_rate = 2.0\n", "simulate.failure_rate must be between 0 and 1"),
        ("[state]\npersist_interval = true\n", "state.persist_interval must be float, got boolean"),
    ],
)
def test_invalid_values_are_rejected(tmp_path: Path, text: str, fragment: str) -> None:
    """Values of the right type but out of range are errors too."""
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_config(write(tmp_path, '[input]\npath = "f.json"\n' + text), environ={})


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """CONVEYOR_<SECTION>_<KEY> wins over the file, typed like the key."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nworkers = 3\n')
    env = {
        "CONVEYOR_DOWNLOAD_WORKERS": "5",
        "CONVEYOR_RETRY_MAX_ATTEMPTS": "7",
        "CONVEYOR_STATE_PERSIST_INTERVAL": "0.25",
        "CONVEYOR_OUTPUT_DIR": "elsewhere",
        "CONVEYOR_UNRELATED": "ignored",
    }
    config = load_config(path, environ=env)
    assert config.download.workers == 5
    assert config.retry.max_attempts == 7
    assert config.state.persist_interval == 0.25
    assert config.output.dir == str(tmp_path / "elsewhere")


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    """An override that does not parse is reported with the variable's name."""
    path = write(tmp_path, '[input]\npath = "f.json"\n')
    with pytest.raises(ConfigError, match=r"CONVEYOR_DOWNLOAD_WORKERS.*must be integer"):
        load_config(path, environ={"CONVEYOR_DOWNLOAD_WORKERS": "many"})
    with pytest.raises(ConfigError, match=r"unknown key download\.wrokers"):
        load_config(path, environ={"CONVEYOR_DOWNLOAD_WROKERS": "2"})


def test_from_mapping_builds_a_config_without_a_file(tmp_path: Path) -> None:
    """The embedding API can build a config from a dict."""
    config = Config.from_mapping({"output": {"dir": "o"}}, base_dir=tmp_path)
    assert config.output.dir == str(tmp_path / "o")
    assert config.input.path == ""


def test_readme_documents_every_key_with_its_default() -> None:
    """The README's config table has a row per key, showing the default the code uses."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and "." in cells[0]:
            rows[cells[0].strip("`")] = cells[1]
    defaults = Config()
    missing, wrong = [], []
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(getattr(defaults, section.name)):
            name = f"{section.name}.{key.name}"
            value = key.default  # as declared (0 for what follows from other keys)
            if value is dataclasses.MISSING:
                value = getattr(getattr(defaults, section.name), key.name)
            if name not in rows:
                missing.append(name)
            elif name != "input.path" and rows[name] != f"`{_toml(value)}`":
                wrong.append((name, rows[name], _toml(value)))
    assert missing == []
    assert wrong == []


def _toml(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_infinite_and_nan_floats_are_rejected(tmp_path: Path, value: str) -> None:
    """``inf``/``nan`` are TOML floats but no usable timeout, rate or interval."""
    path = write(tmp_path, f'[input]\npath = "f.json"\n[download]\ntimeout = {value}\n')
    with pytest.raises(ConfigError, match=r"download\.timeout must be a finite number"):
        load_config(path, environ={})
    ok = write(tmp_path, '[input]\npath = "f.json"\n')
    with pytest.raises(ConfigError, match=r"CONVEYOR_RETRY_BACKOFF_MAX.*finite"):
        load_config(ok, environ={"CONVEYOR_RETRY_BACKOFF_MAX": value})


def test_a_bad_environment_value_names_the_variable_not_the_file(tmp_path: Path) -> None:
    """A value that parses but is out of range blames the variable that set it."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nworkers = 4\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"CONVEYOR_DOWNLOAD_WORKERS": "-1"})
    assert str(info.value) == (
        "environment variable CONVEYOR_DOWNLOAD_WORKERS (download.workers) must not be negative"
    )
    with pytest.raises(ConfigError, match=r"^environment variable CONVEYOR_OUTPUT_IF_EXISTS"):
        load_config(path, environ={"CONVEYOR_OUTPUT_IF_EXISTS": "sometimes"})
    bad_file = write(tmp_path, '[input]\npath = "f.json"\n[download]\nworkers = -2\n')
    with pytest.raises(ConfigError, match=r"conveyor\.toml: download\.workers must not be neg"):
        load_config(bad_file, environ={})


def test_the_old_failure_threshold_keeps_its_meaning(tmp_path: Path) -> None:
    """``failure_threshold = N`` still opens after N failures in a row: it becomes a
    window of N that must be all failures; combined with the new keys it is an error."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[circuit]\nfailure_threshold = 4\n')
    c = load_config(path, environ={}).circuit
    assert (c.window, c.min_requests) == (4, 4)
    assert 3 / 4 <= c.failure_rate < 1.0  # more than 3 of 4 failed: all 4
    mixed = write(
        tmp_path, '[input]\npath = "f.json"\n[circuit]\nfailure_threshold = 4\nwindow = 10\n'
    )
    with pytest.raises(ConfigError, match=r"circuit\.failure_threshold cannot be combined"):
        load_config(mixed, environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("window = 0", r"circuit\.window must be greater than 0"),
        ("min_requests = 60", r"circuit\.min_requests must be between 1 and circuit\.window"),
        ("failure_rate = 1.0", r"circuit\.failure_rate must be at least 0 and below 1"),
    ],
)
def test_breaker_window_keys_are_checked(tmp_path: Path, text: str, message: str) -> None:
    """A window that could never open, or opens on nothing, is a config error."""
    path = write(tmp_path, f'[input]\npath = "f.json"\n[circuit]\n{text}\n')
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_the_requests_engine_brings_its_own_downloader_defaults(tmp_path: Path) -> None:
    """One transfer at a time per downloader: more downloaders, shorter queues — unless
    the file, a flag or the environment says otherwise."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nengine = "requests"\n')
    config = load_config(path, environ={})
    assert (config.download.workers, config.download.mailbox) == (8, 2)
    config = load_config(path, environ={"CONVEYOR_DOWNLOAD_MAILBOX": "5"})
    assert (config.download.workers, config.download.mailbox) == (8, 5)
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nworkers = 3\n')
    assert load_config(path, environ={}).download.workers == 3


def test_a_bad_allowed_network_names_the_key_and_the_value(tmp_path: Path) -> None:
    """``download.allow_networks`` entries must be CIDR networks."""
    text = '[input]\npath = "f.json"\n[download]\nallow_networks = ["10.0.0.0/8", "nope"]\n'
    with pytest.raises(ConfigError, match=r"download\.allow_networks: 'nope' is not an IP") as info:
        load_config(write(tmp_path, text), environ={})
    assert str(tmp_path) in str(info.value)


def test_a_table_key_given_as_text_says_to_use_the_config_file(tmp_path: Path) -> None:
    """A table (``processing.processor_options``) cannot be written as one text value:
    the error names where the text came from and says where a table goes, without
    blaming the environment for a command-line flag."""
    path = write(tmp_path, '[input]\npath = "f.json"\n')
    flag = {"processing.processor_options": ("x", "--set processing.processor_options")}
    with pytest.raises(ConfigError, match=r"--set processing\.processor_options") as raised:
        load_config(path, environ={}, overrides=flag)
    assert "environment" not in str(raised.value)
    assert "config file" in str(raised.value)
    env = {"CONVEYOR_PROCESSING_PROCESSOR_OPTIONS": "x"}
    with pytest.raises(ConfigError, match=r"CONVEYOR_PROCESSING_PROCESSOR_OPTIONS.*config file"):
        load_config(path, environ=env)


def test_a_class_attribute_of_a_section_is_not_a_key(tmp_path: Path) -> None:
    """``DownloadConfig.allow_networks_setting`` is for the code, not a setting: it is not
    listed among the known keys, and setting it is the usual unknown-key error (exit 2),
    never a traceback, from the file, ``--set`` or the environment."""
    path = write(tmp_path, '[input]\npath = "f.json"\n[download]\nallow_networks_setting = "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key download\.allow_networks_setting") as e:
        load_config(path, environ={})
    assert "allow_networks_setting," not in str(e.value).split("known keys")[1]
    plain = write(tmp_path, '[input]\npath = "f.json"\n')
    flag = {"download.allow_networks_setting": ("x", "--set download.allow_networks_setting")}
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(plain, environ={}, overrides=flag)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(plain, environ={"CONVEYOR_DOWNLOAD_ALLOW_NETWORKS_SETTING": "x"})


@pytest.mark.parametrize(
    ("download", "expected"),
    [
        ({}, (256, 1, 256)),
        ({"concurrency": 300}, (300, 1, 300)),
        ({"concurrency": 300, "processes": 2}, (300, 2, 150)),
        ({"concurrency": 10, "workers": 3}, (10, 3, 4)),
        ({"concurrency": 10, "mailbox": 4}, (10, 3, 4)),
        ({"workers": 2, "mailbox": 16}, (32, 2, 16)),
        ({"engine": "requests"}, (8, 8, 2)),
        ({"engine": "requests", "concurrency": 20}, (20, 20, 2)),
        ({"engine": "requests", "workers": 16, "mailbox": 4}, (16, 16, 4)),
    ],
)
def test_download_concurrency_decides_workers_and_mailbox(
    tmp_path: Path, download: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    """``download.concurrency`` is the number of transfers at once: one curl downloader
    runs them all (one per worker process at least), requests runs one per downloader;
    ``workers`` or ``mailbox`` given beside it split it."""
    config = Config.from_mapping({"download": download}, base_dir=tmp_path)
    d = config.download
    assert (d.concurrency, d.workers, d.mailbox) == expected
