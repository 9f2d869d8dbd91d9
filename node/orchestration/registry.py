"""Discovering inference plugins and keeping them loaded per device.

Plugins come from three places:

* the sub-packages of :mod:`plugins` (each exports ``PLUGIN``, a subclass of
  :class:`~node.contract.plugin.InferencePlugin`);
* the entry-point group ``ainode.plugins`` (third-party packages);
* the ``models:`` section of the configuration (MONAI bundles and TorchScript
  files; named instances of the generic plugins, see :meth:`PluginRegistry.configure`).

A plugin that fails to import, to be configured or to load is recorded with its
reason; the node runs without it and jobs that need it fail with that reason.

Loaded plugins are kept per device in a least-recently-used cache. On a GPU the
cache is bounded by a memory budget: the sum of the loaded plugins' declared
``resources.gpu_memory_mb``; loading one more unloads the least recently used
others until it fits.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import pkgutil
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.contract.plugin import Factory, InferencePlugin, PluginInfo
from node.errors import PluginError

if TYPE_CHECKING:  # torch is imported when plugins are
    import torch

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ainode.plugins"
#: Share of a GPU's memory the model cache may fill when no budget is configured.
DEFAULT_GPU_BUDGET_FRACTION = 0.8


def plugin_names(models: Mapping[str, Any] | None = None) -> set[str]:
    """The plugin names :meth:`PluginRegistry.load` will know, found without importing any:
    the sub-packages of :mod:`plugins`, the ``ainode.plugins`` entry points and
    ``models``."""
    import plugins

    names = {m.name for m in pkgutil.iter_modules(plugins.__path__) if m.ispkg}
    names |= {entry.name for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return names | set(models or {})


@dataclass(frozen=True)
class PluginStatus:
    """One line of ``ainode plugins list``."""

    name: str
    version: str
    source: str
    device: str
    loaded: bool
    error: str | None


class PluginRegistry:
    """Known plugins, their errors, and loaded instances per device."""

    def __init__(self, gpu_memory_budget_mb: int | None = None) -> None:
        self._factories: dict[str, Factory] = {}
        self._info: dict[str, PluginInfo] = {}
        self._errors: dict[str, str] = {}
        self._load_errors: dict[tuple[str, str], str] = {}
        self._loaded: OrderedDict[tuple[str, str], InferencePlugin] = OrderedDict()
        self._lock = threading.RLock()
        #: Names expected while :meth:`load` runs (in the background at start-up).
        self._pending: set[str] = set()
        self.gpu_memory_budget_mb = gpu_memory_budget_mb

    @classmethod
    def discover(cls, gpu_memory_budget_mb: int | None = None) -> PluginRegistry:
        registry = cls(gpu_memory_budget_mb)
        registry.import_plugins()
        return registry

    @classmethod
    def names_only(cls, models: Mapping[str, Any] | None = None) -> PluginRegistry:
        """A registry that knows the plugins' names (:func:`plugin_names`) and imports
        none: for commands that only check rules against them."""
        registry = cls()
        registry._pending = plugin_names(models)
        return registry

    def import_plugins(self) -> None:
        """Import the plugins of :mod:`plugins` and of the ``ainode.plugins`` entry points."""
        import plugins

        for module in pkgutil.iter_modules(plugins.__path__, prefix="plugins."):
            if module.ispkg:
                self._import(module.name.removeprefix("plugins."), module.name)
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            self._import(entry.name, entry.value, entry_point=entry)

    def load(self, models: Mapping[str, Any], templates_dir: Path | None = None) -> None:
        """:meth:`import_plugins` then :meth:`configure`; until it returns,
        :meth:`known_names` also holds the names expected (:func:`plugin_names`)."""
        with self._lock:
            self._pending = plugin_names(models)
        try:
            self.import_plugins()
            self.configure(models, templates_dir)
        finally:
            with self._lock:
                self._pending = set()

    def load_only(
        self, name: str, models: Mapping[str, Any], templates_dir: Path | None = None
    ) -> None:
        """Import (or configure) the plugin ``name`` alone: for a process that runs one
        routine (a Ray actor), which need not import every other one."""
        if name in models:
            self.configure({name: models[name]}, templates_dir)
            return
        import plugins

        if any(m.name == name and m.ispkg for m in pkgutil.iter_modules(plugins.__path__)):
            self._import(name, f"plugins.{name}")
            return
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if entry.name == name:
                self._import(name, entry.value, entry_point=entry)
                return
        self.record_error(name, "no such plugin")

    # -- registration ---------------------------------------------------------

    def register(self, plugin: type[InferencePlugin], source: str = "code") -> None:
        """Register a plugin class (instantiated without arguments per device)."""
        self.register_factory(
            PluginInfo(
                plugin.name,
                plugin.version,
                plugin.template,
                source,
                plugin.accepts,
                plugin.resources,
                plugin.validated_on,
                plugin.needs_prior,
            ),
            plugin,
        )

    def register_factory(self, info: PluginInfo, factory: Factory) -> None:
        """Register a plugin made by ``factory`` (configured model instances)."""
        with self._lock:
            if info.name in self._factories:
                raise PluginError(
                    f"plugin name {info.name!r} is taken by {self._info[info.name].source}"
                )
            self._factories[info.name] = factory
            self._info[info.name] = info
            self._errors.pop(info.name, None)

    def record_error(self, name: str, reason: str) -> None:
        with self._lock:
            self._errors[name] = reason
        log.error("plugin unavailable name=%s reason=%s", name, reason)

    def _import(
        self,
        name: str,
        target: str,
        entry_point: importlib.metadata.EntryPoint | None = None,
    ) -> None:
        from node.contract.plugin import InferencePlugin

        try:
            loaded = entry_point.load() if entry_point else importlib.import_module(target)
            plugin = getattr(loaded, "PLUGIN", loaded)
            if not (isinstance(plugin, type) and issubclass(plugin, InferencePlugin)):
                raise PluginError(f"{target} does not export an InferencePlugin as PLUGIN")
            self.register(plugin, source=target)
        except Exception as exc:
            self.record_error(name, f"{type(exc).__name__}: {exc}")

    def configure(self, models: Mapping[str, Any], templates_dir: Path | None = None) -> None:
        """Create the named model instances of the configuration's ``models:`` section.

        A model whose files or labels are wrong is recorded as an error under its
        name (the node starts without it).
        """
        from node.engine.configured import configured_plugin

        for name, settings in models.items():
            try:
                info, factory = configured_plugin(name, settings, templates_dir)
                self.register_factory(info, factory)
            except Exception as exc:
                self.record_error(name, f"{type(exc).__name__}: {exc}")

    # -- queries --------------------------------------------------------------

    @property
    def names(self) -> set[str]:
        with self._lock:
            return set(self._factories)

    @property
    def errors(self) -> dict[str, str]:
        with self._lock:
            return dict(self._errors)

    def known_names(self) -> set[str]:
        """Plugins, failed imports, and (while :meth:`load` runs) the names expected."""
        with self._lock:
            return set(self._factories) | set(self._errors) | self._pending

    def info(self) -> list[PluginInfo]:
        with self._lock:
            return [self._info[name] for name in sorted(self._info)]

    def loaded_devices(self) -> dict[str, list[str]]:
        """Devices each plugin is loaded on now (plugins load on first use)."""
        with self._lock:
            devices: dict[str, list[str]] = {}
            for name, device in self._loaded:
                devices.setdefault(name, []).append(device)
            return devices

    def plugin_info(self, name: str) -> PluginInfo:
        if name in self._info:
            return self._info[name]
        if name in self._errors:
            raise PluginError(f"plugin {name!r} failed to import: {self._errors[name]}")
        raise PluginError(f"no plugin named {name!r}")

    def is_loaded(self, name: str, device: torch.device) -> bool:
        return (name, str(device)) in self._loaded

    def load_error(self, name: str, device: torch.device) -> str | None:
        return self._load_errors.get((name, str(device)))

    def load_errors(self, name: str) -> dict[str, str]:
        """Device → reason, for each device where ``name`` last failed to load."""
        with self._lock:
            return {
                device: reason for (n, device), reason in self._load_errors.items() if n == name
            }

    # -- loading --------------------------------------------------------------

    def get(self, name: str, device: torch.device) -> InferencePlugin:
        """The plugin instance for ``device``, created and loaded on first use.

        Raises
        ------
        PluginError
            If the plugin is unknown, failed to import, or fails to load (the
            reason is kept for :meth:`status`; the next call tries again).
        """
        key = (name, str(device))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            info = self.plugin_info(name)
            self._make_room(device, info.resources.gpu_memory_mb)
            try:
                instance = self._factories[name]()
                instance.load(device)
            except Exception as exc:
                reason = f"plugin {name!r} failed to load on {device}: {type(exc).__name__}: {exc}"
                self._load_errors[key] = reason
                log.error("plugin load failed name=%s device=%s reason=%s", name, device, exc)
                raise PluginError(reason) from exc
            self._load_errors.pop(key, None)
            log.info("plugin loaded name=%s version=%s device=%s", name, instance.version, device)
            self._loaded[key] = instance
            return instance

    def budget_mb(self, device: torch.device) -> float:
        """Memory budget of the model cache on ``device`` (unbounded off CUDA)."""
        if device.type != "cuda":
            return float("inf")
        if self.gpu_memory_budget_mb is not None:
            return float(self.gpu_memory_budget_mb)
        import torch

        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        return total * DEFAULT_GPU_BUDGET_FRACTION

    def _make_room(self, device: torch.device, needed_mb: int) -> None:
        budget = self.budget_mb(device)
        on_device = [key for key in self._loaded if key[1] == str(device)]
        used = sum(self._info[key[0]].resources.gpu_memory_mb for key in on_device)
        for key in on_device:  # least recently used first
            if used + needed_mb <= budget:
                break
            evicted = self._loaded.pop(key)
            used -= self._info[key[0]].resources.gpu_memory_mb
            try:
                evicted.unload()
            except Exception:
                log.exception("plugin unload failed name=%s", key[0])
            log.info("plugin unloaded name=%s device=%s reason=memory budget", *key)

    def status(self, device: torch.device, *, load: bool = False) -> list[PluginStatus]:
        """Every known plugin (and failed import) with its state on ``device``.

        With ``load`` each plugin is loaded first, so the list says whether it can.
        """
        rows: list[PluginStatus] = []
        for name in sorted(self.names | set(self._errors)):
            if name in self._errors:
                rows.append(PluginStatus(name, "-", "-", str(device), False, self._errors[name]))
                continue
            info = self._info[name]
            error: str | None = None
            if info.resources.needs_gpu and device.type != "cuda":
                error = "needs a GPU; this node has none"
            elif load:
                try:
                    self.get(name, device)
                except PluginError as exc:
                    error = str(exc)
            else:
                error = self.load_error(name, device)
            rows.append(
                PluginStatus(
                    name,
                    info.version,
                    info.source,
                    str(device),
                    self.is_loaded(name, device),
                    error,
                )
            )
        return rows

    def unload_all(self) -> None:
        with self._lock:
            while self._loaded:
                key, plugin = self._loaded.popitem(last=False)
                try:
                    plugin.unload()
                except Exception:
                    log.exception("plugin unload failed name=%s", key[0])


def select_devices(preference: str, devices: list[str] | None = None) -> list[torch.device]:
    """The devices to run one worker each on.

    ``devices`` (explicit list) wins; ``auto`` → every visible CUDA device, else the
    CPU; ``cuda`` → every visible CUDA device; anything else → that one device.
    ``CUDA_VISIBLE_DEVICES`` decides what "visible" means (torch reads it).
    """
    import torch

    if devices:
        return [torch.device(d) for d in devices]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if preference == "auto":
        return [torch.device(f"cuda:{i}") for i in range(count)] or [torch.device("cpu")]
    if preference == "cuda":
        if not count:
            raise PluginError("workers.device is 'cuda' but no CUDA device is visible")
        return [torch.device(f"cuda:{i}") for i in range(count)]
    return [torch.device(preference)]


def select_device(preference: str) -> torch.device:
    """``auto`` → first CUDA device if present, else CPU; otherwise the named device."""
    return select_devices(preference)[0]
