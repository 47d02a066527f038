"""The controller runner and the Ryu compatibility package (no root: loopback TCP only)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nslab.controller import free_port, resolve_app, start_controller
from nslab.errors import NslabError

DATA = Path(__file__).parent / "controller_data"


def openflow_hello(port: int, timeout: float = 10.0) -> tuple[int, int]:
    """Connect like a switch and read the controller's first message: (version, type)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        header = b""
        while len(header) < 8:
            chunk = s.recv(8 - len(header))
            assert chunk, "controller closed the connection"
            header += chunk
    version, msg_type, _length, _xid = struct.unpack("!BBHI", header)
    return version, msg_type


@pytest.fixture
def running(tmp_path):
    """start_controller() with teardown that stops exactly the process group it made."""
    procs: list[subprocess.Popen] = []

    def start(app: str, **kw) -> tuple[subprocess.Popen, int, Path]:
        port = free_port()
        log = tmp_path / f"ctl-{len(procs)}.log"
        proc = start_controller(app, port, kw.pop("fabric", None), log, **kw)
        procs.append(proc)
        return proc, port, log

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.parametrize(
    "app",
    [str(DATA / "ryu_simple_switch_13.py"), "ryu.app.simple_switch_13"],
)
def test_controller_speaks_openflow13_and_owns_its_group(running, app) -> None:
    proc, port, log = running(app)
    assert os.getpgid(proc.pid) == proc.pid  # own process group
    assert openflow_hello(port) == (4, 0)  # OpenFlow 1.3 HELLO
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert "instantiating app" in log.read_text()


def test_fabric_path_reaches_the_app_by_its_old_name(running, tmp_path) -> None:
    fabric = tmp_path / "fabric.json"
    fabric.write_text(
        '{"switches": {"s1": {"dpid": 7, "ports": {"1": {"peer": "h1:eth0"}}}},'
        ' "hosts": {"h1": {"interfaces": {"eth0": {"mac": "02:00:00:00:00:01"}}}}}'
    )
    proc, port, log = running("l2_learning", fabric=fabric)  # the alias of fabric_router
    assert openflow_hello(port) == (4, 0)  # OpenFlow 1.3 HELLO from the kit's bundled app
    deadline = time.monotonic() + 10
    while "fabric_router: 1 switches, 1 host MACs" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    assert "app l2_learning is now called fabric_router" in log.read_text()


def test_fabric_router_refuses_a_switches_only_view(tmp_path) -> None:
    fabric = tmp_path / "fabric.json"
    fabric.write_text(
        '{"view": "switches-only", "switches": {"s1": {"dpid": 7, "ports": {"1": {}}}}}'
    )
    with pytest.raises(NslabError, match="switches-only view .no host MACs"):
        start_controller("fabric_router", free_port(), fabric, tmp_path / "c.log")


def test_errors_are_clear(tmp_path) -> None:
    port = free_port()
    log = tmp_path / "c.log"
    with pytest.raises(NslabError, match="not found in .*controller.*fabric_router"):
        start_controller("no_such_app", port, None, log)
    with pytest.raises(NslabError, match="no such file"):
        start_controller(str(tmp_path / "missing.py"), port, None, log)
    broken = tmp_path / "broken.py"
    broken.write_text("import nslab_tctl_missing_module\n")
    with pytest.raises(NslabError, match=r"exited with status 1[\s\S]*nslab_tctl_missing_module"):
        start_controller(str(broken), port, None, log)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(NslabError, match="defines no app class"):
        start_controller(str(empty), port, None, log)


def test_port_taken_by_someone_else_is_not_mistaken_for_ready(tmp_path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(NslabError, match="exited|did not listen"):
            start_controller("ryu.app.simple_switch_13", port, None, tmp_path / "c.log", timeout=20)


def test_resolve_app() -> None:
    assert resolve_app("fabric_router").endswith("controller/fabric_router.py")
    assert resolve_app("l2_learning") == resolve_app("fabric_router")  # the old name
    assert resolve_app("ryu.app.simple_switch_13") == "ryu.app.simple_switch_13"


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nslab.controller", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "--fabric" in out and "--port" in out and "--ofp-tcp-listen-port" in out


def test_ryu_manager_flag_spelling(tmp_path) -> None:
    port = free_port()
    log = tmp_path / "c.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nslab.controller", "ryu.app.simple_switch_13"]
        + ["--ofp-tcp-listen-port", str(port), "--log", str(log)],
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # the runner itself does not say when it listens: poll, bounded
            try:
                assert openflow_hello(port) == (4, 0)
                break
            except ConnectionRefusedError:
                assert proc.poll() is None and time.monotonic() < deadline, "never listened"
                time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_ryu_names_are_os_ken_modules(tmp_path) -> None:
    code = """
import ryu
from ryu.base import app_manager
from ryu.controller import ofp_event, handler
from ryu.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser
from ryu.lib.packet import packet, ethernet, ether_types, arp, ipv4
from ryu.exception import RyuException
import os_ken.controller.ofp_event, os_ken.base.app_manager, os_ken.lib.packet.arp
assert ofp_event is os_ken.controller.ofp_event
assert ofp_event.EventOFPPacketIn is os_ken.controller.ofp_event.EventOFPPacketIn
assert app_manager.RyuApp is os_ken.base.app_manager.OSKenApp
assert arp is os_ken.lib.packet.arp
assert ofp_event.__spec__.name == "os_ken.controller.ofp_event"
app_manager.require_app("ryu.app.ofctl.service")
import sys
assert sys.modules[__name__]._REQUIRED_APP == ["os_ken.app.ofctl.service"]
from ryu.app import simple_switch_13
assert issubclass(simple_switch_13.SimpleSwitch13, app_manager.RyuApp)
try:
    import ryu.no_such_module
except ModuleNotFoundError as e:
    assert "ryu.no_such_module" in str(e)
else:
    raise AssertionError("import of a missing ryu module succeeded")
print("ok")
"""
    script = tmp_path / "uses_ryu.py"  # a file: require_app finds its caller's module
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
