"""nslab.containers: container nodes with no network of their own that join a
topology through veths moved into their namespace, labelled so that remove()
takes exactly nslab's containers of a lab. Real Docker, real namespaces."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator

import pytest

from nslab import containers
from nslab.errors import NslabError
from nslab.topo.model import Node, Origin

TAG = f"{os.getpid() % 100000}"
LAB = f"timg{TAG}"  # every lab, namespace, veth and container here starts with timg
LAB2 = f"timg{TAG}b"


def node(name: str = "n1", **config: object) -> Node:
    env = config.pop("env", {})
    exec_ = config.pop("exec", [])
    return Node(
        name=name,
        kind="linux",
        image="nslab/nf",
        env=env,  # type: ignore[arg-type]
        exec=exec_,  # type: ignore[arg-type]
        config=dict(config),
        origin=Origin("topo.yaml", 7, f"topology.nodes.{name}"),
    )


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode:
        raise AssertionError(f"{cmd}: {proc.stderr}")
    return proc


# --- no Docker needed ----------------------------------------------------------------


def test_check_node_accepts_containerlab_keys() -> None:
    n = node(
        env={"MODEL": "resnet"},
        exec=["ip link set eth1 up"],
        binds=["/tmp:/data:ro"],
        cpu=1.5,
        memory="512MB",
        **{"cpu-set": "0", "cap-add": ["SYS_PTRACE"], "shm-size": "64MiB"},
        sysctls={"net.ipv4.ip_forward": 1},
        gpus="all",
    )
    assert containers.check_node(n) == []
    args, _ = containers.run_args(LAB, n, "nslab/nf:x", gpu=True)
    joined = " ".join(args)
    for expected in (
        "--network none",
        f"--name nslab-{LAB}-n1",
        "--label nslab.managed=1",
        f"--label nslab.lab={LAB}",
        "--label nslab.node=n1",
        "--cap-add NET_ADMIN",
        "--cap-add NET_RAW",
        "--cap-add SYS_PTRACE",
        "--env MODEL=resnet",
        "--volume /tmp:/data:ro",
        "--cpus 1.5",
        "--cpuset-cpus 0",
        f"--memory {512 * 1024**2}",
        f"--shm-size {64 * 1024**2}",
        "--sysctl net.ipv4.ip_forward=1",
        "--gpus all",
    ):
        assert expected in joined
    assert "--privileged" not in args
    assert args[-3:] == ["nslab/nf:x", "sleep", "infinity"]


def test_gpu_request_without_gpu_is_a_recorded_warning() -> None:
    args, warnings = containers.run_args(LAB, node(gpus=1), "img", gpu=False)
    assert "--gpus" not in args
    assert len(warnings) == 1 and "no GPU" in warnings[0]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"cpu": -1}, "cpu"),
        ({"cpu": "two"}, "cpu"),
        ({"memory": "lots"}, "memory"),
        ({"binds": ["data"]}, "binds"),
        ({"binds": "/a:/b"}, "binds"),
        ({"binds": ["/a:/b:rx"]}, "binds"),
        ({"gpus": "some"}, "gpus"),
        ({"sysctls": ["x"]}, "sysctls"),
        ({"exec": [""]}, "exec"),
        ({"env": {"1BAD": "x"}}, "env"),
    ],
)
def test_bad_config_names_file_line_and_key(config: dict, key: str) -> None:
    problems = containers.check_node(node(**config))
    assert len(problems) == 1
    assert problems[0].startswith("topo.yaml:7: topology.nodes.n1: node 'n1'")
    assert f"key {key!r}" in problems[0]
    with pytest.raises(NslabError):
        containers.run_args(LAB, node(**config), "img")


# --- with the Docker engine ----------------------------------------------------------


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Removes this module's labs' containers, the extra containers named in
    the list, and its namespaces and veths, even when a test fails."""
    extra: list[str] = []
    yield extra
    containers.remove(LAB)
    containers.remove(LAB2)
    for name in extra:
        containers.docker("rm", "--force", name, check=False)
    sh("ip", "netns", "del", f"timg{TAG}", check=False)
    sh("ip", "link", "del", f"timg{TAG}a", check=False)


def labels_of(ref: str) -> dict[str, str]:
    info = containers.inspect(ref)
    assert info is not None, f"container {ref} does not exist"
    return info["Config"]["Labels"] or {}


@pytest.mark.root
@pytest.mark.docker
def test_container_joins_a_namespace_over_a_veth(
    nslab_images: dict[str, str], cleanup: list[str]
) -> None:
    image = nslab_images["nf"]
    n = node(
        env={"GREETING": "hello"},
        cpu=0.5,
        memory="128MB",
        gpus="all",
        # exec runs after the links are attached: it can use eth1.
        exec=["ip addr add 10.77.0.3/24 dev eth1", "echo $GREETING > /tmp/greeting"],
    )
    info = containers.start(LAB, n, image)
    assert info.name == f"nslab-{LAB}-n1" and info.pid > 1
    labels = labels_of(info.id)
    assert labels["nslab.managed"] == "1"
    assert labels["nslab.lab"] == LAB and labels["nslab.node"] == "n1"
    if not containers.gpu_available():
        assert any("no GPU" in w for w in info.warnings)

    state = containers.inspect(info.id)
    assert state is not None
    host = state["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["NanoCpus"] == 500_000_000 and host["Memory"] == 128 * 1024**2
    assert {"NET_ADMIN", "NET_RAW"} <= set(host["CapAdd"])

    # Only loopback inside: the container has no network of its own.
    inside = containers.exec_cmd(LAB, "n1")
    links = sh(*inside, "ip", "-o", "link").stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"]

    # A namespace of ours with one veth end; the other end goes into the container.
    ns, a, b = f"timg{TAG}", f"timg{TAG}a", f"timg{TAG}b"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", b, "netns", ns)
    sh("ip", "netns", "exec", ns, "ip", "addr", "add", "10.77.0.1/24", "dev", b)
    sh("ip", "netns", "exec", ns, "ip", "link", "set", b, "up")
    containers.attach_interface(
        info.pid,
        a,
        "eth1",
        [ipaddress.IPv4Interface("10.77.0.2/24")],
        mac="02:00:00:77:00:02",
        offloads_off=True,
    )
    assert sh("ip", "link", "show", a, check=False).returncode != 0, "veth end left the host"
    eth1 = sh(*inside, "ip", "-o", "addr", "show", "dev", "eth1").stdout
    assert "10.77.0.2/24" in eth1
    features = sh("nsenter", "-t", str(info.pid), "-n", "ethtool", "-k", "eth1").stdout
    assert "tx-checksumming: off" in features and "tcp-segmentation-offload: off" in features

    containers.run_exec(LAB, n)
    assert sh(*inside, "cat", "/tmp/greeting").stdout == "hello\n"

    ping = ["ping", "-c", "3", "-i", "0.2", "-W", "2"]
    out = sh("ip", "netns", "exec", ns, *ping, "10.77.0.2", check=False)
    assert out.returncode == 0, f"namespace -> container: {out.stdout}{out.stderr}"
    out = sh(*inside, *ping, "10.77.0.1", check=False)
    assert out.returncode == 0, f"container -> namespace: {out.stdout}{out.stderr}"
    out = sh("ip", "netns", "exec", ns, *ping, "10.77.0.3", check=False)
    assert out.returncode == 0, "the address added by exec answers"
    neigh = sh("ip", "netns", "exec", ns, "ip", "neigh", "show", "10.77.0.2").stdout
    assert "02:00:00:77:00:02" in neigh


@pytest.mark.root
@pytest.mark.docker
def test_failing_exec_names_node_and_command(
    nslab_images: dict[str, str], cleanup: list[str]
) -> None:
    n = node(exec=["true", "exit 3"])
    containers.start(LAB, n, nslab_images["nf"])
    with pytest.raises(NslabError, match=r"node 'n1' exec 'exit 3' failed \(exit 3\)"):
        containers.run_exec(LAB, n)


@pytest.mark.root
@pytest.mark.docker
def test_remove_takes_only_the_labs_labelled_containers(
    nslab_images: dict[str, str], cleanup: list[str]
) -> None:
    image = nslab_images["nf"]
    bystander = f"timg-bystander-{TAG}"
    # From an nslab image, so it inherits the image's nslab.managed=1 label,
    # and labelled with the lab, but never started by nslab: not ours.
    lookalike = f"timg-lookalike-{TAG}"
    cleanup += [bystander, lookalike]
    mine = [containers.start(LAB, node(n), image).name for n in ("n1", "n2")]
    other = containers.start(LAB2, node("n1"), image).name
    containers.docker("run", "-d", "--network", "none", "--name", bystander, image)
    containers.docker(
        "run", "-d", "--network", "none", "--name", lookalike,
        "--label", f"nslab.lab={LAB}", image,
    )  # fmt: skip

    listed = {c["name"] for c in containers.list_containers(LAB)}
    if not {*mine, other} <= {c["name"] for c in containers.list_containers(None)}:
        # Only a machine-wide `nslab down --all` by a concurrent test run does this.
        pytest.skip("another process removed nslab's containers during the test")
    assert listed == set(mine)
    everything = {c["name"] for c in containers.list_containers(None)}
    assert {*mine, other} <= everything
    assert not {bystander, lookalike} & everything

    removed = containers.remove(LAB)
    assert sorted(removed) == sorted(mine)
    for name in mine:
        assert containers.inspect(name) is None
    for name in (other, bystander, lookalike):
        assert containers.inspect(name) is not None, f"{name} must survive remove({LAB!r})"
    assert containers.remove(LAB) == [], "a second remove finds nothing"


@pytest.mark.root
@pytest.mark.docker
def test_start_replaces_own_leftover_but_not_a_stranger(
    nslab_images: dict[str, str], cleanup: list[str]
) -> None:
    image = nslab_images["nf"]
    first = containers.start(LAB, node("n1"), image)
    second = containers.start(LAB, node("n1"), image)  # leftover of a crashed lab: ours
    assert second.id != first.id and containers.inspect(first.id) is None

    stranger = f"nslab-{LAB}-n2"  # someone else's container that happens to have the name
    cleanup.append(stranger)
    containers.docker("run", "-d", "--network", "none", "--name", stranger, image)
    with pytest.raises(NslabError, match="is not nslab's"):
        containers.start(LAB, node("n2"), image)
    assert "nslab.node" not in labels_of(stranger), "the stranger is untouched"


@pytest.mark.root
@pytest.mark.docker
def test_missing_image_is_a_clear_error(cleanup: list[str]) -> None:
    if not containers.docker_available():
        pytest.skip("the Docker engine is not running")
    with pytest.raises(NslabError, match="nslab images build"):
        containers.start(LAB, node("n1"), "nslab/timg-no-such-image:0")
    assert containers.inspect(f"nslab-{LAB}-n1") is None, "nothing half-built is left"


@pytest.mark.root
@pytest.mark.docker
@pytest.mark.gpu
def test_gpu_request_reaches_docker_when_a_gpu_exists(
    nslab_images: dict[str, str], cleanup: list[str]
) -> None:
    if not containers.gpu_available():
        pytest.skip("no GPU here (nvidia-smi -L finds none)")
    info = containers.start(LAB, node(gpus="all"), nslab_images["nf"])
    assert info.warnings == []
    state = containers.inspect(info.id)
    assert state is not None
    requests = state["HostConfig"].get("DeviceRequests") or []
    assert any(["gpu"] in r.get("Capabilities", []) for r in requests)
