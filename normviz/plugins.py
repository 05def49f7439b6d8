"""The plugin manager factory and the registries built from it.

Nothing here runs at import time: callers build a :class:`PluginHost` with
:func:`get_plugin_host` (the CLI once per invocation, tests per test).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from normviz import hookspecs
from normviz.errors import PluginError

if TYPE_CHECKING:
    from torch import nn

    from normviz.datatypes import NormKind, NormSpec, Renderer, Statistic

ENTRY_POINT_GROUP = "normviz"
BUILTIN = "built-in"

# Built-ins go through the same door as third-party plugins: registered by name,
# listable, blockable. Registered first, so third-party implementations run before
# them (pluggy calls the most recently registered first).
DEFAULT_PLUGINS: tuple[str, ...] = (
    "normviz.default_plugins.norm_kinds",
    "normviz.default_plugins.statistics",
    "normviz.default_plugins.covariate_shift",
    "normviz.default_plugins.channels",
    "normviz.default_plugins.gradient_flow",
    "normviz.default_plugins.histograms",
    "normviz.default_plugins.loss",
    "normviz.default_plugins.ranks",
    "normviz.default_plugins.outliers",
    "normviz.default_plugins.rotation",
    "normviz.default_plugins.massive",
    "normviz.default_plugins.attention",
    "normviz.default_plugins.bn_gap",
)


@dataclass
class PluginHost:
    """A plugin manager plus where each plugin came from and what failed to load."""

    pm: pluggy.PluginManager
    sources: dict[str, str] = field(default_factory=dict)  # plugin name -> "built-in" | "dist version"
    failures: dict[str, str] = field(default_factory=dict)  # plugin name -> one-line error
    owners: dict[tuple[str, str], str] = field(default_factory=dict)  # (what, item name) -> plugin name

    def classify(self, name: str, module: nn.Module) -> NormSpec | None:
        """The norm spec the plugins give *module*, or None for an ordinary layer."""
        return self.pm.hook.normviz_classify_module(name=name, module=module)

    def statistics(self) -> dict[str, Statistic]:
        """Every registered statistic by name."""
        return self._collect("normviz_register_statistics", "statistic")

    def renderers(self) -> dict[str, Renderer]:
        """Every registered renderer by name."""
        return self._collect("normviz_register_renderers", "renderer")

    def norm_kinds(self) -> dict[str, NormKind]:
        """Every registered norm kind by name."""
        return self._collect("normviz_register_norm_kinds", "norm kind")

    def listing(self) -> dict[str, Any]:
        """What ``normviz plugins --json`` prints: every renderer, statistic and norm kind with
        the distribution that provides it, the plugins, and the ones that failed to load."""
        renderers, statistics, kinds = self.renderers(), self.statistics(), self.norm_kinds()
        return {
            "renderers": [{"name": n, "description": r.description, "provider": self.owner("renderer", n)}
                          for n, r in sorted(renderers.items())],
            "statistics": [{"name": n, "description": s.description, "default": s.default,
                            "provider": self.owner("statistic", n)} for n, s in sorted(statistics.items())],
            "norm_kinds": [{"name": n, "provider": self.owner("norm kind", n)} for n in kinds],
            "plugins": [{"name": n, "provider": src} for n, src in sorted(self.sources.items())],
            "failures": dict(self.failures),
        }

    def provider(self, plugin: object) -> str:
        """The distribution that provides a registered plugin object."""
        name = self.pm.get_name(plugin) or "?"
        return self.sources.get(name, name)

    def _collect(self, hook_name: str, what: str) -> dict[str, Any]:
        items: dict[str, Any] = {}
        owners: dict[str, str] = {}
        hook = getattr(self.pm.hook, hook_name)
        # Call each implementation on its own so that one plugin raising is reported
        # by name and the others still register.
        for impl in reversed(hook.get_hookimpls()):
            plugin_name = impl.plugin_name
            collected: list[Any] = []
            try:
                impl.function(register=collected.append)
            except Exception as exc:  # noqa: BLE001 - a plugin may raise anything
                self.failures[plugin_name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"normviz plugin {plugin_name!r} failed to register {what}s: {exc}", stacklevel=2)
                continue
            for item in collected:
                if item.name in items:
                    raise PluginError(
                        f"{what} {item.name!r} is registered twice: by {owners[item.name]!r} and by {plugin_name!r}"
                    )
                items[item.name] = item
                owners[item.name] = plugin_name
        self.owners.update({(what, k): v for k, v in owners.items()})
        return items

    def owner(self, what: str, name: str) -> str:
        """The provider ("built-in" or "dist version") of a registered item."""
        plugin_name = self.owners.get((what, name), "?")
        return self.sources.get(plugin_name, plugin_name)


def get_plugin_host(
    *,
    entrypoints: bool = True,
    extra: Iterable[str | ModuleType | object] = (),
    blocked: Iterable[str] = (),
) -> PluginHost:
    """Build a fresh plugin manager with the built-ins, entry points and *extra* plugins.

    Parameters
    ----------
    entrypoints:
        Load third-party plugins from the ``normviz`` entry-point group. The
        environment variable ``NORMVIZ_LOAD_PLUGINS`` (comma-separated entry-point
        names, empty for none) narrows this.
    extra:
        Plugins the user names explicitly: module names or objects.
    blocked:
        Plugin names (built-in module names or entry-point names) not to register.
    """
    pm = pluggy.PluginManager("normviz")
    pm.add_hookspecs(hookspecs)
    host = PluginHost(pm)
    for name in blocked:
        pm.set_blocked(name)
    for modname in DEFAULT_PLUGINS:
        if not pm.is_blocked(modname):
            pm.register(importlib.import_module(modname), name=modname)
            host.sources[modname] = BUILTIN
    if entrypoints:
        _load_entry_points(host)
    for plugin in extra:
        _register_extra(host, plugin)
    pm.check_pending()
    return host


def _load_entry_points(host: PluginHost) -> None:
    allowed = os.environ.get("NORMVIZ_LOAD_PLUGINS")
    wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (wanted is not None and ep.name not in wanted) or host.pm.is_blocked(ep.name):
            continue
        if host.pm.has_plugin(ep.name):
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.name
        try:
            plugin = ep.load()
            host.pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - report any import failure by name
            host.failures[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"normviz plugin {ep.name!r} ({dist}) failed to load: {exc}", stacklevel=3)
            continue
        host.sources[ep.name] = dist


def _register_extra(host: PluginHost, plugin: str | ModuleType | object) -> None:
    if isinstance(plugin, str):
        try:
            obj: object = importlib.import_module(plugin)
        except Exception as exc:  # noqa: BLE001
            raise PluginError(f"cannot import plugin module {plugin!r}: {exc}") from exc
        name = plugin
    else:
        obj = plugin
        name = getattr(plugin, "__name__", type(plugin).__name__)
    if not host.pm.is_registered(obj):
        host.pm.register(obj, name=name)
        host.sources[name] = f"{name} (named explicitly)"


@functools.cache
def registered_norm_kinds() -> dict[str, NormKind]:
    """The norm kinds of the built-ins and the installed plugins, by name: what figures
    name and colour runs by. Collected once per process (a plugin host is built for it)."""
    return get_plugin_host().norm_kinds()
