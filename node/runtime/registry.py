"""Discovering inference plugins and loading each once per device.

Plugins come from the sub-packages of :mod:`plugins` (each exports
``PLUGIN``, a subclass of :class:`~node.runtime.plugin.InferencePlugin`) and
from the entry-point group ``ainode.plugins`` (third-party packages). A
plugin that fails to import is recorded with its reason; the node runs
without it and jobs that need it fail with that reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
import threading
from dataclasses import dataclass

import torch

from node.errors import PluginError
from node.runtime.plugin import InferencePlugin

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ainode.plugins"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    template: str
    source: str


class PluginRegistry:
    """Known plugin classes, their import errors, and loaded instances per device."""

    def __init__(self) -> None:
        self._classes: dict[str, type[InferencePlugin]] = {}
        self._errors: dict[str, str] = {}
        self._sources: dict[str, str] = {}
        self._loaded: dict[tuple[str, str], InferencePlugin] = {}
        self._lock = threading.Lock()

    @classmethod
    def discover(cls) -> PluginRegistry:
        registry = cls()
        import plugins

        for module in pkgutil.iter_modules(plugins.__path__, prefix="plugins."):
            if module.ispkg:
                registry._import(module.name.removeprefix("plugins."), module.name)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            registry._import(entry.name, entry.value, entry_point=entry)
        return registry

    def register(self, plugin: type[InferencePlugin], source: str = "code") -> None:
        self._classes[plugin.name] = plugin
        self._sources[plugin.name] = source

    def _import(
        self,
        name: str,
        target: str,
        entry_point: importlib.metadata.EntryPoint | None = None,
    ) -> None:
        try:
            loaded = entry_point.load() if entry_point else importlib.import_module(target)
            plugin = getattr(loaded, "PLUGIN", loaded)
            if not (isinstance(plugin, type) and issubclass(plugin, InferencePlugin)):
                raise PluginError(f"{target} does not export an InferencePlugin as PLUGIN")
        except Exception as exc:
            self._errors[name] = f"{type(exc).__name__}: {exc}"
            log.error("plugin unavailable name=%s reason=%s", name, self._errors[name])
            return
        self.register(plugin, source=target)

    @property
    def names(self) -> set[str]:
        return set(self._classes)

    @property
    def errors(self) -> dict[str, str]:
        return dict(self._errors)

    def info(self) -> list[PluginInfo]:
        return [
            PluginInfo(p.name, p.version, p.template, self._sources[p.name])
            for p in sorted(self._classes.values(), key=lambda p: p.name)
        ]

    def loaded_devices(self) -> dict[str, list[str]]:
        """Devices each plugin has been loaded on so far (plugins load on first use)."""
        with self._lock:
            devices: dict[str, list[str]] = {}
            for name, device in self._loaded:
                devices.setdefault(name, []).append(device)
            return devices

    def plugin_class(self, name: str) -> type[InferencePlugin]:
        if name in self._classes:
            return self._classes[name]
        if name in self._errors:
            raise PluginError(f"plugin {name!r} failed to import: {self._errors[name]}")
        raise PluginError(f"no plugin named {name!r}")

    def get(self, name: str, device: torch.device) -> InferencePlugin:
        """The plugin instance for ``device``, created and loaded on first use."""
        key = (name, str(device))
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            plugin_class = self.plugin_class(name)
            instance = plugin_class()
            try:
                instance.load(device)
            except Exception as exc:
                raise PluginError(f"plugin {name!r} failed to load on {device}: {exc}") from exc
            log.info("plugin loaded name=%s version=%s device=%s", name, instance.version, device)
            self._loaded[key] = instance
            return instance


def select_device(preference: str) -> torch.device:
    """``auto`` → first CUDA device if present, else CPU; otherwise the named device."""
    if preference == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)
