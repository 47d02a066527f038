"""Compile XDP programs, load them, and explain verifier rejections.

- `compile_argv(src, obj)`: the clang command line. The kit only builds the
  command; whoever runs it decides with which rights. A grader runs it as
  sandboxed student code (`lab.student_command`), because the source is
  hostile (`#include "/etc/shadow"`, `.incbin` of a checks file).
- `load(obj)`: load every program and map of an object file with bpftool
  into a private bpffs mounted for this object only, and return their fds
  (`BpfObject`). Loading is root's job (CAP_BPF, CAP_NET_ADMIN); the
  kernel's verifier decides whether the program is safe to run.
  bpftool (libbpf inside) is used rather than libbpf through ctypes: it
  parses the ELF, BTF and relocations in a child process, not in the grader,
  its output is what students see from `bpftool` themselves, and it is
  stable across libbpf releases. It runs in its own mount namespace where
  /sys/fs/bpf is an empty tmpfs, so an object whose maps ask to be pinned by
  name cannot reuse or leave behind a map of the host.
- `VerifierError`: the verifier's log cut to what matters: the failing
  instruction, the source line it came from (clang -g puts BTF line info
  into the object) and the verifier's reason.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import subprocess
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from nslab.errors import NslabError
from nslab.xdp import bpf

MAX_OBJECT = 4 << 20


def include_dir() -> str:
    """Where Debian/Ubuntu keep asm/ headers for this architecture."""
    return f"/usr/include/{platform.machine()}-linux-gnu"


def compile_argv(src: str, obj: str, extra: list[str] | None = None) -> list[str]:
    """clang -O2 -g -target bpf: -g gives BTF line info (source lines in verifier logs)."""
    cc = shutil.which("clang") or "clang"
    return (
        [cc, "-O2", "-g", "-Wall", "-target", "bpf", f"-I{include_dir()}"]
        + (extra or [])
        + ["-c", src, "-o", obj]
    )


class VerifierError(NslabError):
    """The kernel refused to load a program."""

    def __init__(self, summary: str, log: str):
        self.summary, self.log = summary, log
        super().__init__(summary)


_SRC = re.compile(r"^; (.*) @ (\S+:\d+)\s*$")
_INSN = re.compile(r"^(\d+): \(([0-9a-f]{2})\)")


def explain(output: str, prog_hint: str = "") -> str:
    """The verifier log in `output` (bpftool/libbpf's stderr) cut to: which
    program, the source line, the failing instruction and the reason."""
    lines = output.splitlines()
    m = re.search(r"prog '([^']+)': BPF program load failed: (.+)", output)
    prog = m.group(1) if m else prog_hint
    begin = next((i for i, ln in enumerate(lines) if "BEGIN PROG LOAD LOG" in ln), None)
    end = next((i for i, ln in enumerate(lines) if "END PROG LOAD LOG" in ln), len(lines))
    if begin is None:
        # no verifier log: an ELF/BTF/relocation problem libbpf itself found
        keep = [ln for ln in lines if ln.startswith(("libbpf:", "Error:"))][-8:]
        return "the program could not be loaded:\n  " + "\n  ".join(keep or lines[-8:])
    log = lines[begin + 1 : end]
    # the reason: the lines after the last instruction, before the statistics
    stats = next((i for i, ln in enumerate(log) if ln.startswith("processed ")), len(log))
    last_insn = max((i for i, ln in enumerate(log[:stats]) if _INSN.match(ln)), default=None)
    if last_insn is None:
        reason, insn = log[:stats][-3:], ""
    else:
        reason, insn = log[last_insn + 1 : stats], log[last_insn].split(";")[0].rstrip()
    src = ""
    for ln in reversed(log[: (last_insn if last_insn is not None else stats) + 1]):
        sm = _SRC.match(ln)
        if sm:
            src = f"{sm.group(2)}: {sm.group(1).strip()}"
            break
    out = [f"the verifier rejected program '{prog}'"]
    if src:
        out.append(f"  at {src}")
    if insn:
        out.append(f"  instruction {insn}")
    out += [f"  {r}" for r in reason[:6] if r.strip()]
    if not src:
        out.append("  (compile with -g to see the source line)")
    return "\n".join(out)


def _unmount(root: str) -> None:
    if subprocess.run(["umount", root], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", root], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class BpfObject:
    """A loaded object: pinned programs and maps in a private bpffs."""

    root: Path
    progs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, bpf.Map] = field(default_factory=dict)

    def prog(self, name: str | None = None) -> int:
        if name is None:
            if len(self.progs) != 1:
                raise NslabError(f"the object has {len(self.progs)} programs; name one")
            return next(iter(self.progs.values()))
        if name not in self.progs:
            raise NslabError(
                f"no program '{name}' in the object (it has: {', '.join(sorted(self.progs)) or 'none'}); "
                f'the function needs SEC("xdp") and that name'
            )
        return self.progs[name]

    def pin(self, name: str) -> str:
        return str(self.root / "progs" / name)

    def map(self, name: str) -> bpf.Map:
        if name not in self.maps:
            raise NslabError(
                f"no map '{name}' in the object (it has: {', '.join(sorted(self.maps)) or 'none'}); "
                'declare it in SEC(".maps") with that name'
            )
        return self.maps[name]

    def run(self, packet: bytes, prog: str | None = None) -> bpf.RunResult:
        return bpf.test_run(self.prog(prog), packet)

    def __post_init__(self) -> None:
        # the private bpffs outlives a process that forgot close(): unmount at exit
        self._finalizer = weakref.finalize(self, _unmount, str(self.root))

    def close(self) -> None:
        for fd in self.progs.values():
            os.close(fd)
        for m in self.maps.values():
            m.close()
        self.progs, self.maps = {}, {}
        self._finalizer()

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safe_copy(src: Path, dst: Path) -> None:
    """Copy an untrusted file: no symlinks followed, regular files only, bounded."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise NslabError(f"{src.name}: cannot open the object file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise NslabError(f"{src.name}: not a regular file")
        data = f.read(MAX_OBJECT + 1)
    if len(data) > MAX_OBJECT:
        raise NslabError(f"{src.name}: larger than {MAX_OBJECT >> 20} MiB")
    dst.write_bytes(data)


def load(obj: str | Path, timeout: float = 30.0) -> BpfObject:
    """Load all programs and maps of `obj`; raises VerifierError with the
    trimmed verifier log when the kernel refuses a program."""
    if shutil.which("bpftool") is None:
        raise NslabError("bpftool is not installed (run `sudo make provision`)")
    root = Path(tempfile.mkdtemp(prefix="nslab-bpf-"))
    os.chmod(root, 0o700)
    r = subprocess.run(
        ["mount", "-t", "bpf", "nslab-bpf", str(root)], capture_output=True, text=True
    )
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise NslabError(f"cannot mount a bpffs: {r.stderr.strip()}")
    objs = BpfObject(root)
    try:
        local = root.parent / (root.name + ".o")
        _safe_copy(Path(obj), local)
        script = (
            "mount -t tmpfs -o size=64k,mode=0500 nslab-nopin /sys/fs/bpf 2>/dev/null; "
            'exec bpftool prog loadall "$1" "$2/progs" pinmaps "$2/maps"'
        )
        cmd = ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script, "sh"]
        try:
            r = subprocess.run(
                [*cmd, str(local), str(root)], capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise NslabError(f"loading {Path(obj).name} took longer than {timeout:g} s") from None
        finally:
            local.unlink(missing_ok=True)
        if r.returncode != 0:
            out = r.stdout + r.stderr
            raise VerifierError(explain(out), out)
        for p in sorted((root / "progs").iterdir()):
            objs.progs[p.name] = bpf.obj_get(str(p))
        if (root / "maps").is_dir():
            for p in sorted((root / "maps").iterdir()):
                objs.maps[p.name] = bpf.Map(bpf.obj_get(str(p)), p.name)
        return objs
    except BaseException:
        objs.close()
        raise


def attach_argv(iface: str, pin: str, mode: str = "generic") -> list[str]:
    """`ip link` attaching a pinned program (run it in the interface's namespace)."""
    key = {"generic": "xdpgeneric", "native": "xdpdrv", "offload": "xdpoffload"}[mode]
    return ["ip", "link", "set", "dev", iface, key, "pinned", pin]


def detach_argv(iface: str, mode: str = "generic") -> list[str]:
    key = {"generic": "xdpgeneric", "native": "xdpdrv", "offload": "xdpoffload"}[mode]
    return ["ip", "link", "set", "dev", iface, key, "off"]
