"""Realise a topology model on this host.

Hosts are Mininet hosts (a bash shell in its own network namespace, started by
mnexec). Everything else is batched, because Mininet's one-shell-command-per-
object style dominates bring-up time for large topologies:

- all veth pairs are created by one `ip -batch`, each end directly in its
  final namespace (a host's `eth0` never exists in the root namespace, so two
  labs cannot collide);
- all Open vSwitch bridges and ports are one ovsdb transaction;
- host shells are started in parallel and configured in parallel.

Each resource is recorded in the lab's state *before* it is created, so that
teardown (nslab.engine.teardown) can remove exactly what was made.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import pty
import re
import select
import shlex
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

from mininet.node import Host

from nslab import host as hostcaps
from nslab.engine.state import LabState, proc_of
from nslab.errors import NslabError
from nslab.kinds import get as get_kind
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


class NsHost(Host):
    """A Mininet host whose shell start is split in two, so that a thousand
    hosts start in parallel instead of one prompt at a time."""

    def startShell(self, mnopts: str | None = None) -> None:  # noqa: N802 (Mininet's name)
        self._spawned = False

    def spawn(self) -> None:
        opts = "-cdn"
        cmd = [
            "mnexec",
            opts,
            "env",
            "PS1=" + chr(127),
            "bash",
            "--norc",
            "--noediting",
            "-is",
            "nslab:" + self.name,
        ]
        self.master, self.slave = pty.openpty()
        # No echo from the start, so no `stty -echo` process per host later.
        attrs = termios.tcgetattr(self.slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.shell = self._popen(
            cmd, stdin=self.slave, stdout=self.slave, stderr=self.slave, close_fds=False
        )
        self.stdin = os.fdopen(self.master, "r")
        self.stdout = self.stdin
        self.pid = self.shell.pid
        self.pollOut = select.poll()
        self.pollOut.register(self.stdout)
        self.outToNode[self.stdout.fileno()] = self
        self.inToNode[self.stdin.fileno()] = self
        self.execed, self.lastCmd, self.lastPid, self.readbuf = False, None, None, ""

    def wait_prompt(self, deadline: float) -> None:
        while True:
            data = self.read(1024)
            if data and data[-1] == chr(127):
                break
            if time.monotonic() > deadline:
                raise NslabError(f"host {self.name}: shell did not start")
            self.pollOut.poll(200)
        self.waiting = False
        self.sendCmd("unset HISTFILE; set +m")  # builtins only; answered in finish_start()

    def finish_start(self) -> None:
        self.waitOutput()


def listening(pid: int, port: int) -> bool:
    """Whether a TCP socket listens on `port` in the network namespace of `pid`
    (read from /proc, so no process is spawned per poll)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            return False
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


SIOCETHTOOL = 0x8946
# Legacy ethtool "set" commands (still honoured, mapped onto features by the kernel)
ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO = 0x17, 0x1F, 0x24


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def offloads_off(ends: list[tuple[int, str]]) -> None:
    """`ethtool -K IF tx off tso off gso off` for (pid, interface) pairs, each in
    the network namespace of pid: ioctls from this thread, which visits each
    namespace with setns(2), instead of one ethtool process per interface."""
    if not ends:
        return
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        for pid, name in ends:
            target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                _setns(target)
                # A socket belongs to the namespace it was created in.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    for cmd in (ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO):
                        value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
                        ifreq = struct.pack("16sP", name.encode(), ctypes.addressof(value))
                        fcntl.ioctl(sock, SIOCETHTOOL, ifreq)
            finally:
                os.close(target)
    finally:
        _setns(home)
        os.close(home)


SIOCGIFHWADDR = 0x8927


def iface_macs(pid: int, names: list[str]) -> dict[str, str]:
    """{interface: MAC} of `names` in the network namespace of `pid` (ioctls
    from this thread inside the namespace, as offloads_off; missing ones left out)."""
    out: dict[str, str] = {}
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for name in names:
                    try:
                        res = fcntl.ioctl(sock, SIOCGIFHWADDR, struct.pack("256s", name.encode()))
                    except OSError:
                        continue
                    out[name] = ":".join(f"{b:02x}" for b in res[18:24])
        finally:
            os.close(target)
    finally:
        _setns(home)
        os.close(home)
    return out


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
        self.controller = controller  # {"app", "user", "preexec"} or None
        self.lab = state.name
        self.hosts: dict[str, NsHost] = {}
        self.netem_ok = hostcaps.has_netem()
        self.userspace_ovs = not hostcaps.ovs_kernel_datapath()

    # -- classification -------------------------------------------------------
    def in_root(self, node: str) -> bool:
        return get_kind(self.topo.nodes[node].kind).root_namespace

    def nodes_of(self, kind: str) -> list[Node]:
        return [n for n in self.topo.nodes.values() if n.kind == kind]

    def host_nodes(self) -> list[Node]:
        return [n for n in self.topo.nodes.values() if not get_kind(n.kind).root_namespace]

    # -- steps ------------------------------------------------------------------
    def build(self) -> None:
        t0 = time.monotonic()
        steps = (
            self.start_hosts,
            self.create_links,
            self.create_switches,
            self.configure_hosts,
            self.shape_links,
            self.start_controller,
            self.start_services,
            self.write_fabric,
        )
        for step in steps:
            t = time.monotonic()
            step()
            # Step timings go to supervisor.log: where bring-up time goes.
            print(f"{step.__name__}: {time.monotonic() - t:.2f} s", flush=True)
        self.state.status = "ready"
        self.state.save()
        self.progress(f"lab {self.lab} ready in {time.monotonic() - t0:.1f} s")

    def start_hosts(self) -> None:
        nodes = [n for n in self.host_nodes() if not n.image]
        self.start_containers([n for n in self.host_nodes() if n.image])
        if not nodes:
            return
        self.progress(f"starting {len(nodes)} hosts")
        for n in nodes:
            h = NsHost(n.name)
            h.spawn()
            self.hosts[n.name] = h
            self.state.procs.append(proc_of(h.pid, f"host:{n.name}"))
            self.state.hosts[n.name] = h.pid
        self.state.save()
        deadline = time.monotonic() + 30 + 0.05 * len(nodes)
        for h in self.hosts.values():
            h.wait_prompt(deadline)
        for h in self.hosts.values():
            h.finish_start()

    def start_containers(self, nodes: list[Node]) -> None:
        """Container nodes: Docker containers with no network of their own; the
        topology's links are then created straight into their namespaces."""
        if not nodes:
            return
        from concurrent.futures import ThreadPoolExecutor

        from nslab import containers

        self.progress(f"starting {len(nodes)} containers")
        for n in nodes:
            self.state.containers[n.name] = containers.container_name(self.lab, n.name)
        self.state.save()
        with ThreadPoolExecutor(max_workers=4) as pool:
            infos = list(pool.map(lambda n: containers.start(self.lab, n, n.image), nodes))
        for n, info in zip(nodes, infos, strict=True):
            self.state.hosts[n.name] = info.pid
            for w in info.warnings:
                self.progress(f"warning: {n.name}: {w}")
        self.state.save()

    def node_sh(self, node: str, script: str) -> subprocess.Popen | NsHost:
        """Start a shell line inside a host or container node (no waiting)."""
        if node in self.hosts:
            self.hosts[node].sendCmd(script)
            return self.hosts[node]
        return subprocess.Popen(
            ["nsenter", "-t", str(self.state.hosts[node]), "-n", "--", "bash", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @staticmethod
    def node_wait(handle: subprocess.Popen | NsHost) -> str:
        if isinstance(handle, NsHost):
            return handle.waitOutput()
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
                if (
                    self.userspace_ovs
                    and not self.in_root(ep.node)
                    and self.topo.nodes[peer.node].kind == "ovs-bridge"
                ):
                    no_offload.append((self.state.hosts[ep.node], ep.iface))
        self.state.root_ifaces += root
        self.state.save()
        ip_batch(lines)
        ip_batch([f"link set {n} up" for n in root])
        for n in root:  # no IPv6 autoconf chatter from switch ports in captures
            Path(f"/proc/sys/net/ipv6/conf/{n}/disable_ipv6").write_text("1")
        # OVS's userspace datapath does not finish checksums or segments that
        # the kernel left to the NIC: without this, TCP through it stalls.
        offloads_off(no_offload)

    def create_switches(self) -> None:
        ovs, brs = self.nodes_of("ovs-bridge"), self.nodes_of("bridge")
        if ovs:
            self.progress(f"creating {len(ovs)} Open vSwitch bridges")
            self.state.ovs_bridges += [bridge_name(self.lab, n.name) for n in ovs]
            if self.topo.controller or self.controller:
                from nslab.controller.runner import free_port

                self.state.controller_port = (
                    self.topo.controller.port
                    if (self.topo.controller and self.topo.controller.port)
                    else free_port()
                )
            self.state.save()
            run(["ovs-vsctl", "--timeout=60"] + self._ovs_args(ovs))
        if brs:
            self.progress(f"creating {len(brs)} Linux bridges")
            self.handle_br_netfilter()
            names = [bridge_name(self.lab, n.name) for n in brs]
            self.state.linux_bridges += names
            self.state.save()
            lines = []
            for n, br in zip(brs, names, strict=True):
                lines += [f"link add name {br} type bridge", f"link set {br} up"]
                for iface in ofports_of(self.topo, n.name):
                    lines.append(f"link set {root_ifname(self.lab, n.name, iface)} master {br}")
            ip_batch(lines)

    def _ovs_args(self, ovs: list[Node]) -> list[str]:
        looped = self._has_switch_loop()
        args: list[str] = []
        for n in ovs:
            br = bridge_name(self.lab, n.name)
            ports = ofports_of(self.topo, n.name)
            self.state.ofports[n.name] = ports
            settings = [
                f"other-config:datapath-id={n.dpid or 0:016x}",
                "other-config:disable-in-band=true",
                f"external-ids:nslab-lab={self.lab}",
            ]
            if self.userspace_ovs:
                settings.append("datapath_type=netdev")
            if self.state.controller_port:
                settings += ["fail_mode=secure", "protocols=OpenFlow10,OpenFlow13"]
            elif looped:
                settings.append("rstp_enable=true")  # standalone on a looped fabric: RSTP, no storm
            args += ["--", "add-br", br, "--", "set", "bridge", br, *settings]
            for iface, port in ports.items():
                dev = root_ifname(self.lab, n.name, iface)
                args += [
                    "--",
                    "add-port",
                    br,
                    dev,
                    "--",
                    "set",
                    "interface",
                    dev,
                    f"ofport_request={port}",
                ]
            if self.state.controller_port:
                args += ["--", "set-controller", br, f"tcp:127.0.0.1:{self.state.controller_port}"]
        return args

    def _has_switch_loop(self) -> bool:
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

    def handle_br_netfilter(self) -> None:
        """Once Docker runs, br_netfilter sends bridged frames through iptables'
        FORWARD chain (policy DROP): switch it off for the lab's lifetime."""
        from nslab.engine import sysctl

        for key in (
            "bridge-nf-call-iptables",
            "bridge-nf-call-ip6tables",
            "bridge-nf-call-arptables",
        ):
            sysctl.acquire(self.state, f"net.bridge.{key}", "0")

    def configure_hosts(self) -> None:
        if not self.state.hosts:
            return
        self.progress(f"configuring {len(self.state.hosts)} hosts")
        # Send to every node first, then collect: nodes configure in parallel.
        started = {
            name: self.node_sh(name, self._host_script(self.topo.nodes[name]))
            for name in self.state.hosts
        }
        for name, handle in started.items():
            out = self.node_wait(handle)
            if "NSLAB-OK" not in out:
                raise NslabError(f"configuring host {name} failed: {out.strip()[-400:]}")
        if self.state.containers:
            from nslab import containers

            for name in self.state.containers:
                containers.run_exec(self.lab, self.topo.nodes[name])

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
            log_path = self.state.dir / f"{n.name}.{svc.name}.log"
            with open(log_path, "w") as log:
                proc = subprocess.Popen(
                    ["nsenter", "-t", str(self.state.hosts[n.name]), "-n", "--", *svc.argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **svc.env, "NSLAB_LAB": self.lab},
                    start_new_session=True,
                )
            self.state.procs.append(proc_of(proc.pid, f"service:{n.name}:{svc.name}"))
            started.append((n, svc, proc, log_path))
        self.state.save()
        deadline = time.monotonic() + 60
        for n, svc, proc, log_path in started:
            while svc.ready_port and not listening(proc.pid, svc.ready_port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text()[-800:]
                    why = "exited" if proc.poll() is not None else "did not listen within 60 s"
                    raise NslabError(
                        f"{n.name}: {svc.name} {why} on port {svc.ready_port}:\n{tail}"
                    )
                time.sleep(0.05)

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
            user=opts.get("user"),
            preexec=opts.get("preexec"),
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
            if n.kind in ("ovs-bridge", "bridge"):
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
