"""The plugin base classes and the built-in plugins, where plugin specs name them.

``processing.processor = "runtime.plugins:ChecksumProcessor"`` and
``from runtime.plugins import BaseProcessor`` keep working; the code lives in
``runtime.core.plugins`` (below the actors, which run the plugins).
"""

from runtime.core.filedata import FileData
from runtime.core.plugins import (
    BasePostProcessor,
    BasePreProcessor,
    BaseProcessor,
    ChecksumProcessor,
    Downloaded,
    JsonlManifest,
    NullPostProcessor,
    NullProcessor,
    PluginContext,
)

__all__ = [
    "BasePostProcessor",
    "BasePreProcessor",
    "BaseProcessor",
    "ChecksumProcessor",
    "Downloaded",
    "FileData",
    "JsonlManifest",
    "NullPostProcessor",
    "NullProcessor",
    "PluginContext",
]
