"""Host sysctls a lab must change, shared by all labs that need them.

Several labs may run at once; the original value is restored only when the
last lab that needed the change goes down. The registry lives next to the
labs' state, guarded by a file lock.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path

from nslab.engine.state import RUN_DIR, LabState


def _path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


@contextmanager
def _registry():
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    reg_path = RUN_DIR / "sysctl.json"
    with open(RUN_DIR / "sysctl.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reg = json.loads(reg_path.read_text()) if reg_path.exists() else {}
        yield reg
        reg_path.write_text(json.dumps(reg, indent=1))


def acquire(state: LabState, key: str, value: str) -> None:
    """Set `key` to `value` for this lab; no-op if the key does not exist here."""
    path = _path(key)
    if not path.exists():
        return
    with _registry() as reg:
        entry = reg.setdefault(key, {"orig": path.read_text().strip(), "labs": []})
        if state.name not in entry["labs"]:
            entry["labs"].append(state.name)
        state.sysctls[key] = entry["orig"]
        state.save()
        path.write_text(value)


def release(lab: str) -> None:
    """Drop this lab's claims; restore values nobody needs any more."""
    with _registry() as reg:
        for key in list(reg):
            entry = reg[key]
            if lab in entry["labs"]:
                entry["labs"].remove(lab)
            if not entry["labs"]:
                try:
                    _path(key).write_text(entry["orig"])
                except OSError:
                    pass
                del reg[key]
