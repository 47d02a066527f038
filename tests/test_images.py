"""nslab.images: input hashing, manifests, the apt mirror lookup, and real
cached builds with the Docker engine (the base is built offline once per run
by the session fixture `nslab_images` in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from nslab import containers, images
from nslab.errors import NslabError

T = TypeVar("T")
REAL_PACKAGES = images.REPO_ROOT / "images" / "base" / "packages.txt"


def make_tree(tmp: Path, *, dockerfile: str | None = None, manifest: str | None = None) -> Path:
    """A minimal images/ tree: the real base package list plus one image
    `timgprobe` that copies hello.txt and an included repository file."""
    root = tmp / "images"
    (root / "base").mkdir(parents=True)
    (root / "base" / "packages.txt").write_text(REAL_PACKAGES.read_text())
    reg = REAL_PACKAGES.parent / "Dockerfile.registry"
    (root / "base" / "Dockerfile.registry").write_text(reg.read_text())
    probe = root / "timgprobe"
    probe.mkdir()
    (probe / "Dockerfile").write_text(
        dockerfile or "ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\nCOPY repo/ /opt/repo/\n"
    )
    (probe / "hello.txt").write_text("hello 1\n")
    (probe / "image.yaml").write_text(manifest or "include: [src/mod.py]\noptional: [src/later]\n")
    repo = tmp / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "mod.py").write_text("X = 1\n")
    return root


def hashes(root: Path, tmp: Path) -> dict[str, str]:
    return {n: h for n, (_, h) in images.plan(root, repo_root=tmp / "repo").items()}


# --- no Docker needed ----------------------------------------------------------------


def test_hash_is_stable_and_follows_every_input(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    first = hashes(root, tmp_path)
    assert first == hashes(root, tmp_path), "same inputs must give the same hash"
    assert set(first) == {"base", "timgprobe"}

    seen = {first["timgprobe"]}

    def changed(what: str) -> None:
        h = hashes(root, tmp_path)["timgprobe"]
        assert h not in seen, f"changing {what} must change the image hash"
        seen.add(h)

    (root / "timgprobe" / "hello.txt").write_text("hello 2\n")
    changed("a file in the image folder")
    (tmp_path / "repo" / "src" / "mod.py").write_text("X = 2\n")
    changed("an included repository file")
    (tmp_path / "repo" / "src" / "later").mkdir()
    (tmp_path / "repo" / "src" / "later" / "a.py").write_text("")
    changed("an optional path appearing")
    (root / "timgprobe" / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\n")
    changed("the Dockerfile")
    (root / "base" / "packages.txt").write_text(REAL_PACKAGES.read_text() + "jq\n")
    new = hashes(root, tmp_path)
    assert new["base"] != first["base"], "the package list is an input of the base"
    changed("the parent's hash")

    # Byte-code caches are not inputs.
    before = hashes(root, tmp_path)
    pyc = tmp_path / "repo" / "src" / "later" / "__pycache__"
    pyc.mkdir()
    (pyc / "a.cpython-311.pyc").write_bytes(b"\0")
    assert hashes(root, tmp_path) == before


def test_base_hash_depends_on_source_but_not_on_package_order(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    spec = images.discover(root)["base"]
    local = images.input_hash(spec, None, base_source="local")
    assert images.input_hash(spec, None, base_source="registry") != local
    pkgs = (root / "base" / "packages.txt").read_text().splitlines()
    (root / "base" / "packages.txt").write_text("\n".join(reversed(pkgs)) + "\n")
    assert images.input_hash(spec, None, base_source="local") == local


def test_real_tree_has_base_and_nf() -> None:
    p = images.plan()
    assert list(p)[:1] == ["base"] and "nf" in p
    assert p["nf"][0].parent == "base"
    pkgs = images.packages()
    for needed in ("python3", "python3-scapy", "python3-numpy", "nftables", "iproute2", "tcpdump"):
        assert needed in pkgs


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        ("color: red\n", "unknown key"),
        ("include: [src/missing.py]\n", "does not exist"),
        ("include: [../etc/passwd]\n", "inside the repository"),
        ("from: nosuch\n", "is not an image"),
        ("from: timgprobe\n", "cycle"),
        ("include: src/mod.py\n", "must be a list"),
    ],
)
def test_bad_manifest_names_file_and_problem(tmp_path: Path, manifest: str, expected: str) -> None:
    root = make_tree(tmp_path, manifest=manifest)
    with pytest.raises(NslabError) as err:
        images.plan(root, repo_root=tmp_path / "repo")
    msg = str(err.value)
    assert expected in msg
    assert "timgprobe" in msg


def test_bad_package_name_names_file_and_line(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "base" / "packages.txt").write_text("# tools\npython3\nNot A Package\n")
    with pytest.raises(NslabError, match=r"packages.txt:3: 'Not A Package'"):
        images.packages(root)


def test_mirror_from_apt_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NSLAB_DEBIAN_MIRROR", raising=False)
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d" / "other.list").write_text(
        "deb https://example.invalid/apt cloud-sdk-bookworm main\n"
    )
    (apt / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert images.debian_mirror(apt_dir=apt) == "http://mirror.invalid/debian"
    (apt / "sources.list").write_text("deb [arch=amd64] http://list.invalid/debian bookworm main\n")
    assert images.debian_mirror(apt_dir=apt) == "http://list.invalid/debian"
    monkeypatch.setenv("NSLAB_DEBIAN_MIRROR", "http://env.invalid/debian")
    assert images.debian_mirror(apt_dir=apt) == "http://env.invalid/debian"
    monkeypatch.delenv("NSLAB_DEBIAN_MIRROR")
    with pytest.raises(NslabError, match="NSLAB_DEBIAN_MIRROR"):
        images.debian_mirror(suite="trixie", apt_dir=apt)


# --- with the Docker engine ----------------------------------------------------------


def _label(tag: str, key: str) -> str:
    return containers.docker(
        "image", "inspect", "--format", f'{{{{index .Config.Labels "{key}"}}}}', tag
    ).stdout.strip()


def _image_id(ref: str) -> str:
    return containers.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def while_inputs_hold(step: Callable[[], T]) -> tuple[T, dict[str, str]]:
    """Run `step` with the real tree's inputs unchanged from start to end, and
    return its result with those hashes. Colleagues editing nslab/nf while the
    suite runs would otherwise make a cache-hit check fail for the wrong reason."""
    for _ in range(3):
        before = {n: h for n, (_, h) in images.plan().items()}
        images.build(progress=lambda _line: None)
        result = step()
        if {n: h for n, (_, h) in images.plan().items()} == before:
            return result, before
    pytest.skip("image inputs kept changing while the test ran")


@pytest.mark.root
@pytest.mark.docker
def test_images_are_labelled_and_rebuild_is_a_cache_hit(nslab_images: dict[str, str]) -> None:
    again, digests = while_inputs_hold(lambda: images.build(progress=lambda _line: None))
    assert [r.name for r in again] == list(digests) and set(digests) == set(nslab_images)
    assert [r.cached for r in again] == [True] * len(again), "unchanged inputs must not rebuild"
    for r in again:
        assert r.tag == f"nslab/{r.name}:{digests[r.name][:12]}"
        assert _label(r.tag, "nslab.managed") == "1"
        assert _label(r.tag, "nslab.inputs") == digests[r.name]
        assert _image_id(f"nslab/{r.name}:latest") == _image_id(r.tag)


@pytest.mark.root
@pytest.mark.docker
def test_cli_second_build_reports_cache_hit(nslab_images: dict[str, str]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "nslab", "images", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    (out, listing), digests = while_inputs_hold(lambda: (cli("build"), cli("list")))
    assert out.returncode == 0, out.stderr
    assert "all cached" in out.stdout
    tags = [f"nslab/{n}:{h[:12]}" for n, h in digests.items()]
    for tag in tags:
        assert f"cached {tag}" in out.stdout
    assert listing.returncode == 0, listing.stderr
    for tag in tags:
        assert any(tag in line and " built " in line for line in listing.stdout.splitlines())


@pytest.mark.root
@pytest.mark.docker
def test_nf_image_holds_what_nfs_need(nslab_images: dict[str, str]) -> None:
    name = f"timg-nfcheck-{os.getpid()}"
    script = (
        "import scapy.all, numpy, yaml, nslab.errors; print('py-ok'); "
        "import os; print('nf-ok' if os.path.isdir('/opt/nslab/nslab/nf') else 'nf-missing')"
    )
    try:
        out = containers.docker(
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            "none",
            nslab_images["nf"],
            "sh",
            "-c",
            f'python3 -c "{script}" && nft --version && ip -V && tcpdump --version',
            timeout=60,
        )
    finally:
        containers.docker("rm", "--force", name, check=False)
    assert "py-ok" in out.stdout
    assert "nftables" in out.stdout
    if (images.REPO_ROOT / "nslab" / "nf").is_dir():
        assert "nf-ok" in out.stdout


@pytest.mark.root
@pytest.mark.docker
def test_changed_input_rebuilds_only_that_image(
    nslab_images: dict[str, str], tmp_path: Path
) -> None:
    root = make_tree(tmp_path)
    repo_root = tmp_path / "repo"
    quiet = {"progress": lambda _line: None, "root": root, "repo_root": repo_root}
    quiet["log_dir"] = tmp_path / "logs"
    built: list[str] = []
    try:
        first = {r.name: r for r in images.build(**quiet)}
        built.append(first["timgprobe"].tag)
        assert first["base"].cached, "same package list as the real base: must reuse it"
        assert first["base"].tag == nslab_images["base"]
        assert not first["timgprobe"].cached
        assert first["timgprobe"].log and first["timgprobe"].log.is_file()
        assert "Step " in first["timgprobe"].log.read_text(), "the build log holds docker's output"

        second = {r.name: r for r in images.build(**quiet)}
        assert second["timgprobe"].cached and second["timgprobe"].tag == first["timgprobe"].tag

        (root / "timgprobe" / "hello.txt").write_text("hello 2\n")
        third = {r.name: r for r in images.build(**quiet)}
        built.append(third["timgprobe"].tag)
        assert not third["timgprobe"].cached and third["base"].cached
        assert third["timgprobe"].tag != first["timgprobe"].tag
        out = containers.docker(
            "run",
            "--rm",
            "--network",
            "none",
            "--name",
            f"timg-probe-{os.getpid()}",
            "nslab/timgprobe:latest",
            "cat",
            "/hello.txt",
            "/opt/repo/src/mod.py",
        )
        assert out.stdout == "hello 2\nX = 1\n", "latest must point at the rebuilt image"

        removed = images.prune(root=root, repo_root=repo_root, progress=lambda _line: None)
        assert first["timgprobe"].tag in removed, "the old hash tag is pruned"
        assert third["timgprobe"].tag not in removed and third["base"].tag not in removed
        assert (
            containers.docker("image", "inspect", third["timgprobe"].tag, check=False).returncode
            == 0
        )
        assert (
            containers.docker("image", "inspect", nslab_images["nf"], check=False).returncode == 0
        )
    finally:
        for tag in [*built, "nslab/timgprobe:latest"]:
            containers.docker("rmi", "--force", tag, check=False)


@pytest.mark.root
@pytest.mark.docker
def test_failed_build_reports_log(nslab_images: dict[str, str], tmp_path: Path) -> None:
    root = make_tree(tmp_path, dockerfile="ARG BASE\nFROM ${BASE}\nCOPY no-such-file /x\n")
    with pytest.raises(NslabError) as err:
        images.build(
            ["timgprobe"],
            root=root,
            repo_root=tmp_path / "repo",
            log_dir=tmp_path / "logs",
            progress=lambda _line: None,
        )
    msg = str(err.value)
    assert "no-such-file" in msg and "full log:" in msg
    assert containers.docker("image", "ls", "-q", "nslab/timgprobe").stdout.strip() == ""


@pytest.mark.root
@pytest.mark.docker
def test_resolve_maps_topology_image_names_to_hash_tags(nslab_images: dict[str, str]) -> None:
    resolved, digests = while_inputs_hold(
        lambda: [images.resolve(r, build_missing=False) for r in ("nslab/nf", "nslab/nf:latest")]
    )
    assert resolved == [f"nslab/nf:{digests['nf'][:12]}"] * 2
    # Pinned tags, unknown nslab names and other images are left to docker.
    assert images.resolve("nslab/nf:0123456789ab") == "nslab/nf:0123456789ab"
    assert images.resolve("nslab/timg-unknown") == "nslab/timg-unknown"
    assert images.resolve("debian:bookworm-slim") == "debian:bookworm-slim"


@pytest.mark.root
def test_rootfs_cleanup_never_deletes_through_a_leftover_mount(tmp_path: Path) -> None:
    """A killed debootstrap leaves host paths bind-mounted into the rootfs;
    removing the rootfs must unmount them, not delete the host's files."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    host = tmp_path / "timg-host"
    host.mkdir()
    (host / "precious").write_text("keep me\n")
    work = tmp_path / "timg-work"
    target = work / "rootfs" / "dev"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host), str(target)], check=True, timeout=30)
    try:
        images._remove_tree(work, progress=lambda _line: None)
        assert (host / "precious").read_text() == "keep me\n"
        assert not work.exists()
    finally:
        subprocess.run(["umount", "--lazy", str(target)], capture_output=True, timeout=30)


@pytest.mark.root
@pytest.mark.docker
def test_registry_base_without_registry_says_how_to_build_offline(tmp_path: Path) -> None:
    if not containers.docker_available():
        pytest.skip("the Docker engine is not running")
    root = make_tree(tmp_path)
    kw = {"root": root, "repo_root": tmp_path / "repo", "log_dir": tmp_path / "logs"}
    tag = images.tag_of(
        images.discover(root)["base"],
        images.plan(root, base_source="registry", repo_root=tmp_path / "repo")["base"][1],
    )
    try:
        images.build(["base"], base_source="registry", progress=lambda _line: None, **kw)
    except NslabError as exc:
        assert "--base local" in str(exc) and "full log:" in str(exc)
    else:  # a registry is reachable here: then the build must have produced the tag
        assert containers.docker("image", "inspect", tag, check=False).returncode == 0
    finally:
        containers.docker("rmi", "--force", tag, check=False)
