"""Kernel NFs from nslab/nf/templates: rendered, loaded with nft into a node
of a namespace topology we build, and observed with real HTTP traffic.

  c 10.8.0.2 -- k (eth0 10.8.0.1 + VIP 10.8.0.100 | eth1 10.8.1.1) -- sw (bridge) -- b1 b2 b3 (10.8.1.11-13)

Also: the Ansible path (nslab.nf.apply) against a real NF container, when
ansible-runner and the Docker engine are present.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nslab.errors import NslabError
from nslab.nf import render
from nslab.nf.netns import NetnsSet
from nslab.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["10.8.1.11", "10.8.1.12", "10.8.1.13"]
VIP = "10.8.0.100"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nft)")

CLIENT = r"""
import json, sys, urllib.request
out = []
for url in json.loads(sys.argv[1]):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=1.5) as r:
            out.append(json.loads(r.read()))
    except Exception as e:
        out.append({"error": type(e).__name__})
print(json.dumps(out))
"""


def test_render_errors_are_clear():
    with pytest.raises(
        NslabError, match="no NF template 'nope'.*available: firewall, guard, lb, napt"
    ):
        render("nope")
    with pytest.raises(NslabError, match="'port' is undefined"):
        render("lb", vip="1.2.3.4", backends=["1.2.3.5"])
    with pytest.raises(NslabError, match=r"vip='1.2.3' is not an IPv4 address"):
        render("lb", vip="1.2.3", port=80, backends=["1.2.3.5"])
    with pytest.raises(NslabError, match="inside_net='10.0.0.0/33' is not an IPv4 network"):
        render(
            "napt", inside_if="a", outside_if="b", inside_net="10.0.0.0/33", outside_ip="1.1.1.1"
        )


def test_lb_template_uses_numgen():
    text = render("lb", vip=VIP, port=80, backends=BACKENDS)
    assert "numgen inc mod 3 map { 0 : 10.8.1.11, 1 : 10.8.1.12, 2 : 10.8.1.13 }" in text


@pytest.fixture(scope="module")
def knet():
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, nft)")
    with NetnsSet("tnf") as n:
        c, k, sw = n.ns("c"), n.ns("k"), n.ns("sw")
        n.veth(c, "eth0", k, "eth0")
        n.veth(k, "eth1", sw, "p0")
        ports = ["p0"]
        for i, ip in enumerate(BACKENDS, start=1):
            b = n.ns(f"b{i}")
            n.veth(b, "eth0", sw, f"p{i}")
            ports.append(f"p{i}")
            n.addr(b, "eth0", f"{ip}/24", gateway="10.8.1.1")
            n.popen(
                b,
                [sys.executable, "-m", "nslab.nf.backend", "--name", f"b{i}", "--port", "80"],
                cwd=ROOT,
            )
        n.bridge(sw, "br0", ports)
        n.addr(c, "eth0", "10.8.0.2/24", gateway="10.8.0.1")
        n.addr(k, "eth0", "10.8.0.1/24")
        n.addr(k, "eth0", f"{VIP}/24")
        n.addr(k, "eth1", "10.8.1.1/24")
        n.exec(k, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # backends listen once they answer from inside the bridge's subnet
        wait_until(
            lambda: (
                n.exec(
                    k,
                    [
                        "sh",
                        "-c",
                        f"{sys.executable} -c \"import socket; socket.create_connection(('{BACKENDS[2]}', 80), 1)\"",
                    ],
                    check=False,
                ).returncode
                == 0
            ),
            timeout=10,
            what=f"backend {BACKENDS[2]}:80 to accept a connection",
        )
        yield n, c, k


def load(n: NetnsSet, k: str, text: str) -> None:
    n.exec(k, ["nft", "-f", "-"], input=text)


def requests(n: NetnsSet, c: str, urls: list[str]) -> list[dict]:
    r = n.exec(c, [sys.executable, "-c", CLIENT, json.dumps(urls)], timeout=60)
    return json.loads(r.stdout)


@needs_root
def test_lb_template_round_robin_and_blocks_the_rest(knet):
    n, c, k = knet
    load(n, k, render("lb", vip=VIP, port=80, backends=BACKENDS))
    got = requests(n, c, [f"http://{VIP}/v1/x"] * 6 + [f"http://{BACKENDS[0]}/direct"])
    names = [g.get("backend") for g in got[:6]]
    assert names[:3] in (["b1", "b2", "b3"], ["b2", "b3", "b1"], ["b3", "b1", "b2"]), got
    assert names[3:] == names[:3], f"not round robin: {names}"
    assert all(g["client"] == "10.8.0.2" for g in got[:6])  # DNAT only: the client is seen
    assert "error" in got[6], "a backend was reachable without going through the VIP"


@needs_root
def test_napt_template_hides_the_inside(knet):
    n, c, k = knet
    load(
        n,
        k,
        render(
            "napt",
            inside_if="eth0",
            outside_if="eth1",
            inside_net="10.8.0.0/24",
            outside_ip="10.8.1.1",
        ),
    )
    got = requests(n, c, [f"http://{ip}/" for ip in BACKENDS])
    assert [g.get("client") for g in got] == ["10.8.1.1"] * 3, got
    ping = n.exec(c, ["ping", "-c", "1", "-W", "1", BACKENDS[0]], check=False)
    assert ping.returncode == 0


@needs_root
def test_firewall_template_allows_only_what_it_lists(knet):
    n, c, k = knet
    n.exec(k, ["nft", "delete", "table", "ip", "nslab_nf"], check=False)
    load(
        n,
        k,
        render(
            "firewall",
            allow=[{"proto": "tcp", "dport": 80, "daddr": BACKENDS[1]}],
            allow_ping=False,
        ),
    )
    try:
        got = requests(n, c, [f"http://{BACKENDS[1]}/", f"http://{BACKENDS[0]}/"])
        assert got[0].get("backend") == "b2" and "error" in got[1], got
        assert n.exec(c, ["ping", "-c", "1", "-W", "1", BACKENDS[1]], check=False).returncode != 0
    finally:
        n.exec(k, ["nft", "delete", "table", "inet", "nslab_fw"], check=False)


# -- the Ansible path -------------------------------------------------------------
def _have_ansible() -> bool:
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        return False
    return (
        shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) is not None
        or shutil.which("ansible-playbook") is not None
    )


@pytest.mark.docker
@pytest.mark.skipif(
    not _have_ansible(),
    reason="ansible-runner/ansible not installed (pip install ansible-runner ansible)",
)
def test_apply_with_ansible_to_a_container(nslab_images):
    from nslab.nf import apply

    name = f"tnf-ansible-{secrets.token_hex(3)}"
    docker = shutil.which("docker") or "/usr/bin/docker"
    subprocess.run(
        [
            docker,
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "--network",
            "none",
            "--cap-add",
            "NET_ADMIN",
            "--label",
            "tnf.test=1",
            nslab_images["nf"],
            "sleep",
            "120",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        env_path = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{Path(sys.executable).parent}:{env_path}"
        try:
            res = apply(
                name, "lb", {"vip": VIP, "port": 80, "backends": BACKENDS, "nf_ip_forward": False}
            )
        finally:
            os.environ["PATH"] = env_path
        assert res["rc"] == 0 and res["changed"] >= 1
        listed = subprocess.run(
            [docker, "exec", name, "nft", "list", "table", "ip", "nslab_nf"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "numgen inc mod 3" in listed.stdout, listed.stdout + listed.stderr
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=60)
