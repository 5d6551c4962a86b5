"""conveyor's runtime: configuration, transports, the store, the CLI and the embedding API."""

from importlib import metadata as _metadata

from runtime.clock import Clock, SystemClock
from runtime.config import Config, load_config
from runtime.errors import (
    ConfigError,
    ConveyorError,
    FetchError,
    HTTPStatusError,
    InputError,
    SupervisionError,
)
from runtime.pipeline import EXIT_CODES, Pipeline, RunSummary
from runtime.plugins import BasePostProcessor, BaseProcessor, Downloaded, PluginContext

try:
    __version__ = _metadata.version("conveyor")
except _metadata.PackageNotFoundError:  # run from a checkout that is not installed
    __version__ = "0+unknown"

__all__ = [
    "EXIT_CODES",
    "BasePostProcessor",
    "BaseProcessor",
    "Clock",
    "Config",
    "ConfigError",
    "ConveyorError",
    "Downloaded",
    "FetchError",
    "HTTPStatusError",
    "InputError",
    "Pipeline",
    "PluginContext",
    "RunSummary",
    "SupervisionError",
    "SystemClock",
    "__version__",
    "load_config",
]
