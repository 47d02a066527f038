"""Realise a topology model on this host.

Each node kind creates and configures its own nodes (nslab.kinds); this
module runs the phases and offers the primitives they share. Hosts are bash
shells in network namespaces of their own (`unshare -n`, as Mininet's hosts
are). Everything is batched, because one shell command per object dominates
bring-up time for large topologies:

- all veth pairs are created by one `ip -batch`, each end directly in its
  final namespace (a host's `eth0` never exists in the root namespace, so two
  labs cannot collide);
- all Open vSwitch bridges and ports are one ovsdb transaction;
- host shells are started in parallel and configured in parallel.

Each resource is recorded in the lab's state *before* it is created, so that
teardown (nslab.engine.teardown) can remove exactly what was made.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shlex
import subprocess
import termios
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from nslab import host as hostcaps
from nslab import process
from nslab.engine.state import LabState, proc_of
from nslab.errors import NslabError
from nslab.kinds import Kind, by_kind
from nslab.kinds import get as get_kind
from nslab.netns import iface_macs, offloads_off
from nslab.topo.model import Link, LinkParams, Node, Topology
from nslab.topo.names import bridge_name, root_ifname

Progress = Callable[[str], None]


def run(cmd: list[str], input: str | None = None, check: bool = True) -> str:
    r = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise NslabError(f"{' '.join(cmd[:3])} failed: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def ip_batch(lines: list[str], force: bool = False) -> None:
    """Run many `ip` commands in one process."""
    if lines:
        run(
            ["ip", "-force", "-batch", "-"] if force else ["ip", "-batch", "-"],
            "\n".join(lines) + "\n",
            check=not force,
        )


class NsShell:
    """A bash in a network namespace of its own (`unshare -n`), driven over a
    pty: the host's process, which holds the namespace. Started in two halves
    (spawn, then wait_prompt) so that a thousand hosts start in parallel.
    Plain util-linux instead of Mininet's Host: the engine needs only this,
    and Mininet's Host keeps its state in private fields that change."""

    PROMPT = chr(127)

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = 0
        self._buf = ""

    def spawn(self) -> None:
        master, slave = pty.openpty()
        # No echo from the start, so no `stty -echo` process per host later.
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        cmd = ["unshare", "-n", "env", f"PS1={self.PROMPT}", "bash", "--norc", "--noediting"]
        self.proc = subprocess.Popen(
            [*cmd, "-is", "nslab:" + self.name],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.fd = master
        self.pid = self.proc.pid  # unshare execs bash: the same process
        self.poll = select.poll()
        self.poll.register(master, select.POLLIN)

    def _read_prompt(self, deadline: float | None) -> str:
        while self.PROMPT not in self._buf:
            if deadline is not None and time.monotonic() > deadline:
                raise NslabError(f"host {self.name}: shell did not answer")
            if self.poll.poll(200):
                try:
                    data = os.read(self.fd, 65536)
                except OSError as exc:
                    raise NslabError(f"host {self.name}: shell exited ({exc})") from None
                if not data:
                    raise NslabError(f"host {self.name}: shell exited")
                self._buf += data.decode(errors="replace")
        out, _, self._buf = self._buf.partition(self.PROMPT)
        return out

    def wait_prompt(self, deadline: float) -> None:
        self._read_prompt(deadline)
        self.send("unset HISTFILE; set +m")  # builtins only; answered by wait()

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def wait(self, timeout: float = 120) -> str:
        """The output of the last line sent, up to the next prompt."""
        return self._read_prompt(time.monotonic() + timeout)


def ofports_of(topo: Topology, node: str) -> dict[str, int]:
    """OpenFlow port numbers: ethN -> N, other names get the next free numbers."""
    ifaces = sorted({lo.iface for lo, _ in topo.neighbours(node)})
    ports: dict[str, int] = {}
    for name in ifaces:
        m = re.fullmatch(r"[a-z]*?(\d+)", name)
        if m and int(m.group(1)) > 0 and int(m.group(1)) not in ports.values():
            ports[name] = int(m.group(1))
    nxt = max(ports.values(), default=0) + 1
    for name in ifaces:
        if name not in ports:
            ports[name], nxt = nxt, nxt + 1
    return ports


def tc_commands(dev: str, p: LinkParams, netem_ok: bool) -> list[str]:
    """tc lines (for `tc -batch`) shaping one interface like Mininet's TCLink."""
    lines: list[str] = []
    parent = "root"
    if p.bw is not None:
        lines += [
            f"qdisc add dev {dev} root handle 5: htb default 1",
            f"class add dev {dev} parent 5: classid 5:1 htb rate {p.bw}mbit burst 15k",
        ]
        parent = "parent 5:1"
    if netem_ok and p.needs_netem():
        netem = "netem"
        if p.delay:
            netem += f" delay {p.delay}" + (f" {p.jitter}" if p.jitter else "")
        if p.loss:
            netem += f" loss {p.loss}%"
        if p.max_queue:
            netem += f" limit {p.max_queue}"
        lines.append(f"qdisc add dev {dev} {parent} handle 10: {netem}")
    elif p.max_queue:
        lines.append(f"qdisc add dev {dev} {parent} handle 10: pfifo limit {p.max_queue}")
    return lines


class Builder:
    def __init__(
        self, topo: Topology, state: LabState, progress: Progress, controller: dict | None = None
    ) -> None:
        self.topo = topo
        self.state = state
        self.progress = progress
        self.controller = controller  # {"app", "wrap"} or None
        self.lab = state.name
        self.hosts: dict[str, NsShell] = {}
        self.netem_ok = hostcaps.has_netem()
        self.userspace_ovs = not hostcaps.ovs_kernel_datapath()

    # -- what the kinds are asked --------------------------------------------
    def kind(self, node: str) -> Kind:
        return get_kind(self.topo.nodes[node].kind)

    def in_root(self, node: str) -> bool:
        return self.kind(node).root_namespace

    # -- steps ------------------------------------------------------------------
    def build(self) -> None:
        """Host kinds create their nodes, the links come next (their ends are
        made inside the namespaces), then switch kinds create theirs from the
        links' root ends; kinds configure; then shaping, controller, services."""
        t0 = time.monotonic()
        groups = by_kind(self.topo)
        hosts = [(k, ns) for k, ns in groups if not k.root_namespace]
        switches = [(k, ns) for k, ns in groups if k.root_namespace]
        steps: list[tuple[str, Callable[[], None]]] = [
            *((f"create {k.name}", partial(k.create, ns, self)) for k, ns in hosts),
            ("create_links", self.create_links),
            *((f"create {k.name}", partial(k.create, ns, self)) for k, ns in switches),
            *((f"configure {k.name}", partial(k.configure, ns, self)) for k, ns in groups),
            ("shape_links", self.shape_links),
            ("start_controller", self.start_controller),
            ("start_services", self.start_services),
            ("write_fabric", self.write_fabric),
        ]
        for name, step in steps:
            t = time.monotonic()
            step()
            # Step timings go to supervisor.log: where bring-up time goes.
            print(f"{name}: {time.monotonic() - t:.2f} s", flush=True)
        self.state.status = "ready"
        self.state.save()
        self.progress(f"lab {self.lab} ready in {time.monotonic() - t0:.1f} s")

    # -- primitives the kinds use ---------------------------------------------
    def start_shells(self, nodes: list[Node]) -> None:
        """A shell in a new network namespace per node, started in parallel."""
        if not nodes:
            return
        self.progress(f"starting {len(nodes)} hosts")
        started = []
        for n in nodes:
            h = NsShell(n.name)
            h.spawn()
            started.append(h)
            self.hosts[n.name] = h
            self.state.procs.append(proc_of(h.pid, f"host:{n.name}"))
            self.state.hosts[n.name] = h.pid
        self.state.save()
        deadline = time.monotonic() + 30 + 0.05 * len(nodes)
        for h in started:
            h.wait_prompt(deadline)
        for h in started:
            h.wait()

    def configure_addresses(self, nodes: list[Node]) -> None:
        """Addresses, MACs and routes of host nodes, all nodes in parallel."""
        if not nodes:
            return
        self.progress(f"configuring {len(nodes)} hosts")
        # Send to every node first, then collect: nodes configure in parallel.
        started = {n.name: self.node_sh(n.name, self._host_script(n)) for n in nodes}
        for name, handle in started.items():
            out = self.node_wait(handle)
            if "NSLAB-OK" not in out:
                raise NslabError(f"configuring host {name} failed: {out.strip()[-400:]}")

    def run(self, cmd: list[str], input: str | None = None) -> str:
        return run(cmd, input)

    def ip_batch(self, lines: list[str]) -> None:
        ip_batch(lines)

    def ofports(self, node: str) -> dict[str, int]:
        return ofports_of(self.topo, node)

    def acquire_sysctl(self, key: str, value: str) -> None:
        """Set a host sysctl for the lab's lifetime (reference-counted across labs)."""
        from nslab.engine import sysctl

        sysctl.acquire(self.state, key, value)

    def allocate_controller_port(self) -> None:
        if (self.topo.controller or self.controller) and not self.state.controller_port:
            from nslab.ports import free_port

            self.state.controller_port = (
                self.topo.controller.port
                if (self.topo.controller and self.topo.controller.port)
                else free_port()
            )

    def node_sh(self, node: str, script: str) -> subprocess.Popen | NsShell:
        """Start a shell line inside a host or container node (no waiting)."""
        if node in self.hosts:
            self.hosts[node].send(script)
            return self.hosts[node]
        return subprocess.Popen(
            ["nsenter", "-t", str(self.state.hosts[node]), "-n", "--", "bash", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @staticmethod
    def node_wait(handle: subprocess.Popen | NsShell) -> str:
        if isinstance(handle, NsShell):
            return handle.wait()
        out, _ = handle.communicate(timeout=60)
        return out

    def _end(self, node: str, iface: str) -> tuple[str, str]:
        """(name, netns argument) of one veth end."""
        if self.in_root(node):
            return root_ifname(self.lab, node, iface), ""
        return iface, f" netns {self.state.hosts[node]}"

    def create_links(self) -> None:
        """Every veth pair is one line of a single `ip -batch`, each end created
        directly in its node's namespace (moving devices between namespaces
        costs an RCU grace period each: seconds at a thousand hosts)."""
        if not self.topo.links:
            return
        self.progress(f"creating {len(self.topo.links)} links")
        lines, root, no_offload = [], [], []
        for link in self.topo.links:
            (na, nsa), (nb, nsb) = (
                self._end(link.a.node, link.a.iface),
                self._end(link.b.node, link.b.iface),
            )
            root += [n for n, ns in ((na, nsa), (nb, nsb)) if not ns]
            lines.append(f"link add name {na}{nsa} type veth peer name {nb}{nsb}")
            for ep, peer in ((link.a, link.b), (link.b, link.a)):
                if not self.in_root(ep.node) and self.kind(peer.node).peer_needs_offloads_off(self):
                    no_offload.append((self.state.hosts[ep.node], ep.iface))
        self.state.root_ifaces += root
        self.state.save()
        ip_batch(lines)
        ip_batch([f"link set {n} up" for n in root])
        for n in root:  # no IPv6 autoconf chatter from switch ports in captures
            Path(f"/proc/sys/net/ipv6/conf/{n}/disable_ipv6").write_text("1")
        offloads_off((f"/proc/{pid}/ns/net", iface) for pid, iface in no_offload)

    def has_switch_loop(self) -> bool:
        """A cycle among switch-switch links (union-find)."""
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        for link in self.topo.links:
            if self.in_root(link.a.node) and self.in_root(link.b.node):
                ra, rb = find(link.a.node), find(link.b.node)
                if ra == rb:
                    return True
                parent[ra] = rb
        return False

    def _host_script(self, node: Node) -> str:
        """One shell line per host: bash builtins and a single `ip -batch`, because
        at a thousand hosts every extra process costs seconds."""
        ip = ["link set lo up"]
        for lo, _ in self.topo.neighbours(node.name):
            intf = node.interfaces.get(lo.iface)
            if intf and intf.mac:
                ip.append(f"link set {lo.iface} address {intf.mac}")
            ip.append(f"link set {lo.iface} up")
            ip += [
                f"addr add {i.with_prefixlen} dev {lo.iface}" for i in (intf.ips if intf else [])
            ]
        if node.gateway:
            ip.append(f"route add default via {node.gateway}")
        batch = "\\n".join(ip)  # bash $'...' turns \n into newlines; ip lines hold no quotes
        return " && ".join(
            [
                # No IPv6 chatter (RS, MLD) in the lab's captures.
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
                "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
                f"ip -batch - <<< $'{batch}'",
                "echo NSLAB-OK",
            ]
        )

    def shape_links(self) -> None:
        shaped = [link for link in self.topo.links if link.params.is_shaped()]
        if not shaped:
            return
        self.progress(f"shaping {len(shaped)} links")
        root_lines: list[str] = []
        per_host: dict[str, list[str]] = {}
        for link in shaped:
            for ep in link.endpoints:
                dev, _ = self._end(ep.node, ep.iface)
                lines = tc_commands(dev, link.params, self.netem_ok)
                if not lines:
                    continue  # only netem was asked for, and the lab runs degraded without it
                if self.in_root(ep.node):
                    root_lines += lines
                else:
                    per_host.setdefault(ep.node, []).extend(lines)
        if root_lines:
            run(["tc", "-batch", "-"], "\n".join(root_lines) + "\n")
        for node, lines in per_host.items():
            out = self.node_wait(
                self.node_sh(node, " && ".join(f"tc {ln}" for ln in lines) + " && echo NSLAB-OK")
            )
            if "NSLAB-OK" not in out:
                raise NslabError(f"shaping links of {node} failed: {out.strip()[-300:]}")

    def start_services(self) -> None:
        """Processes that node kinds run in their nodes (e.g. a pod's model
        server), started once the network is up; ready when their port listens."""
        todo = [
            (n, svc)
            for n in self.topo.nodes.values()
            for svc in get_kind(n.kind).services(n, self.topo)
        ]
        if not todo:
            return
        self.progress(f"starting {len(todo)} services")
        started = []
        for n, svc in todo:
            # Started together, awaited after: services come up in parallel.
            # They inherit the supervisor's cgroup, the lab's owner.
            p = process.start(
                ["nsenter", "-t", str(self.state.hosts[n.name]), "-n", "--", *svc.argv],
                what=f"{n.name}: {svc.name}",
                log=self.state.dir / f"{n.name}.{svc.name}.log",
                env={**os.environ, **svc.env, "NSLAB_LAB": self.lab},
            )
            self.state.procs.append(proc_of(p.pid, f"service:{n.name}:{svc.name}"))
            started.append((p, svc))
        self.state.save()
        for p, svc in started:
            p.wait_ready(process.Ready(port=svc.ready_port, timeout=60))

    def start_controller(self) -> None:
        port = self.state.controller_port
        if not port:
            return
        from nslab.controller.runner import start_controller

        app = (self.controller or {}).get("app") or (
            self.topo.controller.app if self.topo.controller else None
        )
        if not app:
            raise NslabError(
                "ovs-bridge nodes need a controller app (topology `controller:` or --controller)"
            )
        self.progress(f"starting controller {app} on port {port}")
        self.write_fabric()
        opts = self.controller or {}
        proc = start_controller(
            app,
            port,
            self.state.dir / "fabric.json",
            self.state.dir / "controller.log",
            wrap=opts.get("wrap"),
        )
        self.state.procs.append(proc_of(proc.pid, "controller"))
        self.state.save()
        self.wait_connected()

    def wait_connected(self, timeout: float = 30) -> None:
        """Until every bridge says its controller connection is up."""
        deadline = time.monotonic() + timeout
        want = len(self.state.ovs_bridges)
        while True:
            out = run(
                [
                    "ovs-vsctl",
                    "--timeout=5",
                    "--format=json",
                    "--columns=target,is_connected",
                    "list",
                    "controller",
                ],
                check=False,
            )
            try:
                rows = json.loads(out)["data"] if out else []
            except ValueError:
                rows = []
            target = f"tcp:127.0.0.1:{self.state.controller_port}"
            up = sum(1 for t, c in rows if t == target and c is True)
            if up >= want:
                return
            if time.monotonic() > deadline:
                raise NslabError(
                    f"only {up} of {want} switches connected to the controller "
                    f"within {timeout:.0f} s: see {self.state.dir / 'controller.log'}"
                )
            time.sleep(0.1)

    def write_fabric(self) -> None:
        """The topology as a controller sees it: switches, ports, hosts with
        their interfaces' MACs (configured, else read from the namespace).
        With topology `controller: {fabric: switches-only}` only switches and
        switch-to-switch links: a lab whose controller must learn the hosts."""
        ctrl = self.topo.controller
        hide_hosts = ctrl is not None and getattr(ctrl, "fabric", "full") == "switches-only"
        fabric: dict = {"lab": self.lab, "switches": {}}
        if hide_hosts:
            fabric["view"] = "switches-only"
        else:
            fabric["hosts"] = {}
        for n in self.topo.nodes.values():
            if get_kind(n.kind).role == "switch":
                ports = self.state.ofports.get(n.name) or ofports_of(self.topo, n.name)
                peers = {lo.iface: rem for lo, rem in self.topo.neighbours(n.name)}
                out = {}
                for i, p in ports.items():
                    role = "switch" if self.in_root(peers[i].node) else "host"
                    out[str(p)] = {"iface": i, "peer": str(peers[i]), "peer_role": role}
                    if hide_hosts and role == "host":
                        del out[str(p)]["peer"]
                fabric["switches"][n.name] = {
                    "dpid": n.dpid,
                    "bridge": bridge_name(self.lab, n.name),
                    "ports": out,
                }
            elif not hide_hosts:
                ifaces = sorted(lo.iface for lo, _ in self.topo.neighbours(n.name))
                pid = self.state.hosts.get(n.name)
                live = iface_macs(pid, ifaces) if pid else {}
                interfaces = {}
                for i in ifaces:
                    intf = n.interfaces.get(i)
                    interfaces[i] = {
                        "mac": (intf.mac if intf and intf.mac else None) or live.get(i),
                        "ips": [str(a) for a in (intf.ips if intf else [])],
                    }
                fabric["hosts"][n.name] = {
                    "ips": [str(i) for i in n.ips],
                    "mac": next((v["mac"] for v in interfaces.values() if v["mac"]), None),
                    "gateway": str(n.gateway) if n.gateway else None,
                    "interfaces": interfaces,
                }
        self.state.dir.mkdir(parents=True, exist_ok=True)
        Path(self.state.dir / "fabric.json").write_text(json.dumps(fabric, indent=1))


def quote(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


__all__ = ["Builder", "Link", "ofports_of", "quote"]
