"""Loading students' classes (batching and dispatch policies) from FILE.py:ClassName."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from nslab.errors import NslabError


def class_from_file(spec: str, what: str, hint: str, module_prefix: str) -> type:
    """The class named by `FILE.py:ClassName`; `what` names it in errors
    (e.g. 'batching policy'), `hint` says how to write the spec."""
    path, sep, cls_name = spec.rpartition(":")
    if not sep or not path.endswith(".py"):
        raise NslabError(f"{what} {spec!r}: {hint}")
    if not Path(path).is_file():
        raise NslabError(f"{what} file {path} does not exist")
    mod_spec = importlib.util.spec_from_file_location(f"{module_prefix}{Path(path).stem}", path)
    assert mod_spec and mod_spec.loader
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise NslabError(f"{what} file {path} defines no class {cls_name!r}")
    return cls
