"""Ryu compatibility: `import ryu.X` gives you `os_ken.X`.

Ryu no longer installs on Python >= 3.10, but most SDN tutorials and course
material are written against it. os-ken is its maintained fork with the same
layout, so a `sys.meta_path` finder aliases every `ryu.<name>` module to the
very same module object `os_ken.<name>`: event classes, decorators and the app
registry are shared, and a Ryu app runs unchanged under os-ken.

Two renamed names are added back: `app_manager.RyuApp` (os-ken's `OSKenApp`)
and `exception.RyuException` (`OSKenException`). App names passed to
`require_app`/`register_service` may be spelled `ryu.` or `os_ken.`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
from types import ModuleType

_PREFIX = "ryu."
_TARGET = "os_ken."

# Modules that os-ken dropped but Ryu tutorials build on: served from this package.
# (`from ryu.app import x` looks x up as `os_ken.app.x`, so both spellings map.)
_OVERRIDES = {
    f"{pkg}.app.{app}": f"ryu._apps.{app}"
    for pkg in ("ryu", "os_ken")
    for app in ("simple_switch_13",)
}


def to_os_ken(name: str) -> str:
    """Translate a Ryu module name (`ryu.controller.ofp_handler`) to os-ken's."""
    if name in _OVERRIDES:
        return _OVERRIDES[name]
    if name == "ryu" or name.startswith(_PREFIX):
        return "os_ken" + name[len("ryu") :]
    return name


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just stamped our alias spec onto the shared
        # module; give it back its own so os-ken sees nothing changed.
        module.__spec__ = self.real_spec


class _RyuAliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (finder protocol)
        if fullname not in _OVERRIDES and (
            not fullname.startswith(_PREFIX) or fullname.startswith("ryu._")
        ):
            return None
        real = to_os_ken(fullname)
        try:
            found = importlib.util.find_spec(real)
        except ModuleNotFoundError:
            found = None
        if found is None:
            return None  # let Python raise its usual "No module named ryu.X"
        return importlib.machinery.ModuleSpec(
            fullname,
            _AliasLoader(real),
            is_package=found.submodule_search_locations is not None,
        )


def _add_ryu_names() -> None:
    from os_ken import exception
    from os_ken.base import app_manager
    from os_ken.controller import handler

    app_manager.RyuApp = app_manager.OSKenApp
    exception.RyuException = exception.OSKenException

    if getattr(app_manager.require_app, "_nslab_ryu", False):
        return

    # Both functions find their caller by inspecting the stack, so they are
    # re-implemented (same frame depth) rather than wrapped.
    def require_app(app_name: str, api_style: bool = False) -> None:
        frames = (inspect.getmodule(f[0]) for f in inspect.stack())
        modules = [m for m in frames if m is not None]
        m = modules[2] if api_style else modules[1]
        m._REQUIRED_APP = getattr(m, "_REQUIRED_APP", [])
        m._REQUIRED_APP.append(to_os_ken(app_name))

    def register_service(service: str) -> None:
        caller = sys._getframe(1).f_globals["__name__"]
        sys.modules[caller]._SERVICE_NAME = to_os_ken(service)

    require_app._nslab_ryu = True  # type: ignore[attr-defined]
    app_manager.require_app = require_app
    handler.register_service = register_service


def install() -> None:
    """Install the alias finder (idempotent). Importing `ryu` does this."""
    if not any(isinstance(f, _RyuAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _RyuAliasFinder())
    _add_ryu_names()


install()
