"""conveyor's runtime: configuration, transports, the store, the CLI and the embedding API."""

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
    "load_config",
]
