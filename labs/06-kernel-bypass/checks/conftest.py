"""Lab 6's grading fixtures: the student's C compiled as student code, the
objects loaded by the grader, a secret seed for every value compared.

- `built`: xdp_filter.c and xdp_lb.c compiled with clang, as the sandboxed
  student user (`lab.student_command`), in the submission's work dir. Its
  output is student data: only shown as feedback, trimmed.
- `obj(name)`: the object loaded by the grader (nslab.xdp.loader: bpftool,
  a private bpffs). A verifier rejection fails the check with the trimmed
  verifier log; nothing of the student's runs in a grader process except
  the verified BPF program, which the kernel runs.
- `rng`: random.Random from a per-grading secret: rule ports, flows and
  backends cannot be guessed in advance.
"""

from __future__ import annotations

import random
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from nslab.xdp import loader

GRADER = Path(__file__).resolve().parent.parent / "grader"
sys.path.insert(0, str(GRADER))
# The reference models are the lab's answers: the grading copy is in a
# root-only dir, and student code's sandbox does not see the checkout at all.

SOURCES = {"filter": "xdp_filter.c", "lb": "xdp_lb.c"}
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _trim(text: str, n: int = 25) -> str:
    lines = text.strip().splitlines()
    return "\n".join(lines[:n] + (["..."] if len(lines) > n else []))


@pytest.fixture(scope="session")
def built(lab) -> dict[str, str]:
    """name -> '' when the object was built, else clang's complaint."""
    out = {}
    for name, src in SOURCES.items():
        obj = lab.submission / (Path(src).stem + ".o")
        if obj.is_symlink() or obj.exists():
            obj.unlink()  # only what clang writes now counts
        argv = lab.student_command(loader.compile_argv(src, obj.name))
        try:
            r = subprocess.run(
                argv,
                env=lab.student_env(),
                cwd=lab.submission,
                capture_output=True,
                text=True,
                timeout=60,
            )
            out[name] = "" if r.returncode == 0 else f"{src} does not compile:\n{_trim(r.stderr)}"
        except subprocess.TimeoutExpired:
            out[name] = f"{src}: clang took longer than 60 s"
    lab.kill_student()  # nothing of the compiler outlives it
    return out


@pytest.fixture(scope="session")
def objects(lab, built):
    """name -> loaded BpfObject, or the reason it is not there."""
    objs: dict = {}
    for name, src in SOURCES.items():
        if built[name]:
            objs[name] = built[name]
            continue
        try:
            objs[name] = loader.load(lab.submission / (Path(src).stem + ".o"))
        except loader.VerifierError as exc:
            objs[name] = f"{src}: {exc.summary}"
        except Exception as exc:  # a broken object is the submission's failure
            objs[name] = f"{src}: {exc}"
    yield objs
    for o in objs.values():
        if isinstance(o, loader.BpfObject):
            o.close()


@pytest.fixture(scope="session")
def obj(objects):
    def get(name: str) -> loader.BpfObject:
        o = objects[name]
        if not isinstance(o, loader.BpfObject):
            pytest.fail(o)
        return o

    return get


@pytest.fixture(scope="session")
def rng(lab) -> random.Random:
    return random.Random(secrets.randbits(64))


@pytest.fixture(scope="session")
def style(lab) -> str:
    return lab.params.get("style", "plain")


def offloads_off(lab, node: str, iface: str = "eth0") -> None:
    """Checksums computed in software and no GRO, so XDP sees finished frames
    (veth otherwise hands on partial checksums and merged segments)."""
    lab.exec(node, ["ethtool", "-K", iface, "tx", "off", "tso", "off", "gso", "off", "gro", "off"])
