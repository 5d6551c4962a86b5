"""Finding and building the plugins a configuration names.

A plugin is ``package.module:Class``: a subclass of conveyor's base class of its stage
(``BasePreProcessor``, ``BaseProcessor``, ``BasePostProcessor``), or a class written for
download-pipeline-processor, recognised by its ``pre_process`` / ``process`` /
``post_process`` method and run through ``runtime.core.filedata``'s adapters.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from typing import Any

from runtime.core.config import Config
from runtime.core.errors import ConfigError
from runtime.core.filedata import DUCK_METHODS, build_duck, duck_adapter, duck_arguments
from runtime.core.plugins import BasePostProcessor, BasePreProcessor, BaseProcessor

__all__ = [
    "STAGES",
    "check_plugin",
    "check_plugins",
    "load_plugin",
    "load_post_processor",
    "load_pre_processor",
    "load_processor",
    "load_stage",
    "plugin_class",
]


def plugin_class(spec: str, base: type[Any], key: str, path: Sequence[str] = ()) -> type[Any]:
    """Import the class of ``package.module:Class``, looking in ``path`` too.

    Plugins are found on the import path of the process, to which the directories of
    ``path`` (``processing.plugin_path``: the config file's directory first) are added
    at the end, so a plugin module next to the config is found from any directory.

    Raises:
        ConfigError: naming ``processing.<key>`` when the import or lookup fails, or the
            class is neither a subclass of ``base`` nor has the method of its stage.
    """
    for folder in path:
        if folder not in sys.path:
            sys.path.append(folder)
    module_name, _, attr = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except ImportError as exc:
        where = ", ".join(path) or "the current directory"
        raise ConfigError(
            f"processing.{key}: cannot import {module_name!r}: {exc} (plugins are looked "
            f"for on the Python path and in processing.plugin_path: {where})"
        ) from exc
    except AttributeError:
        raise ConfigError(f"processing.{key}: {module_name!r} has no {attr!r}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"processing.{key}: {spec} is not a class")
    if not issubclass(cls, base) and duck_adapter(cls, base) is None:
        method = DUCK_METHODS[base][0]
        raise ConfigError(
            f"processing.{key}: {spec} is neither a subclass of {base.__name__} nor a class "
            f"with a {method}() method"
        )
    return cls


def check_plugin(
    spec: str,
    options: dict[str, Any],
    base: type[Any],
    key: str,
    path: Sequence[str] = (),
) -> None:
    """Check that the plugin imports and takes ``options``, without building it.

    Raises:
        ConfigError: as ``plugin_class``, or naming ``processing.<key>_options``.
    """
    cls = plugin_class(spec, base, key, path)
    arguments = options if issubclass(cls, base) else duck_arguments(cls, options, False)
    try:
        inspect.signature(cls).bind(**arguments)
    except TypeError as exc:
        raise ConfigError(f"processing.{key}_options: {spec} rejects the options: {exc}") from exc


def load_plugin(
    spec: str,
    options: dict[str, Any],
    base: type[Any],
    key: str,
    path: Sequence[str] = (),
    *,
    debug: bool = False,
) -> Any:
    """Import ``package.module:Class`` (see ``plugin_class``) and build it with ``options``;
    a class of the other project's is built with ``debug=`` and wrapped in its adapter.

    Raises:
        ConfigError: naming ``processing.<key>`` when the import, lookup or call fails.
    """
    cls = plugin_class(spec, base, key, path)
    try:
        if issubclass(cls, base):
            return cls(**options)
        return build_duck(cls, base, options, debug)
    except TypeError as exc:
        raise ConfigError(f"processing.{key}_options: {spec} rejected the options: {exc}") from exc


STAGES: dict[str, type[Any]] = {
    "processor": BaseProcessor,
    "pre_processor": BasePreProcessor,
    "post_processor": BasePostProcessor,
}
"""Each plugin key of ``[processing]`` and the base class of its stage."""


def load_stage(config: Config, key: str) -> Any:
    """The plugin ``processing.<key>`` names, built (None when it names none)."""
    p = config.processing
    spec = getattr(p, key)
    if not spec:
        return None
    options = getattr(p, f"{key}_options")
    debug = config.log.level == "debug"
    return load_plugin(spec, options, STAGES[key], key, p.plugin_path, debug=debug)


def load_processor(config: Config) -> BaseProcessor:
    """The configured processor, built."""
    plugin: BaseProcessor = load_stage(config, "processor")
    return plugin


def load_pre_processor(config: Config) -> BasePreProcessor | None:
    """The configured pre-processor, built (None when there is none)."""
    plugin: BasePreProcessor | None = load_stage(config, "pre_processor")
    return plugin


def load_post_processor(config: Config) -> BasePostProcessor:
    """The configured post-processor, built."""
    plugin: BasePostProcessor = load_stage(config, "post_processor")
    return plugin


def check_plugins(config: Config) -> None:
    """Import every configured plugin class and check its options, building none.

    Raises:
        ConfigError: naming the key that is wrong.
    """
    p = config.processing
    for key, base in STAGES.items():
        if spec := getattr(p, key):
            check_plugin(spec, getattr(p, f"{key}_options"), base, key, p.plugin_path)
