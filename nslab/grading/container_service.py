"""Student services on container nodes (lab 1's NFs in NF containers).

A lab service whose node is a container node (kind `linux` with an `image`)
runs inside that container, as student code:

* the submission's work dir (its own copy, made by the grader) is bound into
  the container at /work, the program's cwd; the container sees nothing else
  of the host (no checkout, no other submission, no grader output) and has its
  own PID namespace, so no grader process either;
* the program runs as the slot's student uid with only the capabilities the
  service lists (CAP_NET_RAW/CAP_NET_ADMIN for an NF), ambient, with no new
  privileges and the lab's rlimits (`nslab.containers.student_exec_argv`);
* before the first such service starts, the NF containers get their nftables
  kernel guard the way operators configure NFs: with Ansible
  (`nslab.nf.apply`, template `guard`, over the community.docker
  connection). The NF is told so (NSLAB_NF_GUARD=external) and does not
  install its own. Without Ansible the NF installs the guard itself (a
  warning in its log says so).

`{python}` in a service's command is the container's interpreter, with the
image's copy of the kit's public NF toolkit on PYTHONPATH; `{submission}` is
/work.
"""

from __future__ import annotations

import pwd
import resource
import sys
from typing import Any

from nslab import containers
from nslab.errors import NslabError
from nslab.grading import sandbox
from nslab.labs import Service

PYTHON = "/usr/bin/python3"
WORK = "/work"
IMAGE_PYTHONPATH = "/opt/nslab"  # images/nf/Dockerfile copies the kit's nslab/nf there


def in_container(lab: Any, node: str | None) -> bool:
    """True when `node` of the running lab is a container node."""
    engine = getattr(lab, "engine", None)
    return node is not None and engine is not None and node in engine.state.containers


def rlimits(limits: sandbox.Limits) -> list[tuple[str, int]]:
    """The lab's limits as prlimit options, clamped to the current hard limits
    (raising a hard limit needs CAP_SYS_RESOURCE, which root may lack)."""
    mb = 1024 * 1024
    wanted = [
        ("cpu", resource.RLIMIT_CPU, limits.cpu_s),
        ("as", resource.RLIMIT_AS, limits.memory_mb * mb),
        ("nproc", resource.RLIMIT_NPROC, limits.nproc),
        ("fsize", resource.RLIMIT_FSIZE, limits.fsize_mb * mb),
        ("nofile", resource.RLIMIT_NOFILE, limits.nofile),
        ("core", resource.RLIMIT_CORE, 0),
    ]
    out = []
    for name, res, value in wanted:
        hard = resource.getrlimit(res)[1]
        out.append((name, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return out


def prepare(lab: Any) -> bool:
    """Once per lab: bind the submission into every container node that runs a
    student service, and apply the kernel guard to them with Ansible.
    Returns True when the guard was applied (else the NFs install their own)."""
    done = getattr(lab, "_container_prep", None)
    if done is not None:
        return done
    nodes = sorted(
        {s.node for s in lab.spec.services if s.user != "grader" and in_container(lab, s.node)}
    )
    for node in nodes:
        containers.bind_into(lab.engine.pid(node), lab.submission, WORK)
    guarded = False
    try:
        import ansible_runner  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        print(
            "warning: ansible-runner is not installed (scripts/provision.sh installs it): "
            "the NFs install their kernel guard themselves",
            file=sys.stderr,
        )
    else:
        from nslab.nf import apply

        names = [containers.container_name(lab.engine.name, n) for n in nodes]
        try:
            apply(names, "guard", {"nf_ip_forward": False})
        except NslabError as exc:
            raise NslabError(
                f"the NF containers' kernel guard could not be applied: {exc}"
            ) from None
        guarded = True
    lab._container_prep = guarded
    return guarded


def command(lab: Any, svc: Service) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run `svc` inside its container node as
    sandboxed student code (the caller starts it in the lab's cgroup, in a
    session of its own: SIGTERM to the group reaches the program itself)."""
    guarded = prepare(lab)
    fmt = {"submission": WORK, "python": PYTHON}
    if isinstance(svc.command, str):
        argv = ["sh", "-c", svc.command.format(**fmt)]
    else:
        argv = [a.format(**fmt) for a in svc.command]
    pw = pwd.getpwnam(lab.user)
    if pw.pw_uid == 0:
        raise NslabError(f"refusing to run student code as '{lab.user}': it is root")
    cmd = containers.student_exec_argv(
        lab.engine.pid(svc.node),
        pw.pw_uid,
        pw.pw_gid,
        argv,
        caps=svc.caps,
        cwd=WORK,
        rlimits=rlimits(lab.limits),
    )
    env = sandbox.student_env(WORK, {"PYTHONPATH": IMAGE_PYTHONPATH, **svc.env})
    env["NSLAB_LAB"] = lab.instance  # the lab's label: teardown finds the process
    if guarded:
        env["NSLAB_NF_GUARD"] = "external"
    return cmd, env
