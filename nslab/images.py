"""Build nslab's container images offline, tagged by a hash of their inputs.

Layout (see docs/images.md):

    images/base/packages.txt        Debian packages of the shared base
    images/base/Dockerfile.registry the same base FROM debian:bookworm-slim (registry option)
    images/<name>/Dockerfile        every other image: `ARG BASE` + `FROM ${BASE}`, COPY only
    images/<name>/image.yaml        optional: `from` (parent image, default base),
                                    `include` / `optional` (repository paths copied to repo/)

The base is built without any registry: `debootstrap --variant=minbase` from the
Debian mirror in the machine's apt configuration, then `docker import`. Each
image is tagged `nslab/<name>:<hash12>` (hash of its inputs and its parent's
hash) and `nslab/<name>:latest`, labelled `nslab.managed=1`; an image whose
hash tag exists is a cache hit and is not rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nslab import REPO_ROOT
from nslab.containers import docker, docker_bin, require_docker
from nslab.errors import NslabError

# Bump when the build procedure changes in a way that changes images.
FORMAT = "nslab-images-1"
SUITE = "bookworm"
LOCK_FILE = Path("/run/lock/nslab-images.lock")
DEFAULT_LOG_DIR = Path("/var/log/nslab/images")
MANIFEST_KEYS = {"from", "include", "optional"}
BASE_SOURCES = ("local", "registry")
_SKIP = {"__pycache__", ".pytest_cache", ".ruff_cache"}

Progress = Callable[[str], None]


@dataclass
class ImageSpec:
    name: str
    dir: Path
    parent: str | None  # None for the base
    include: list[str] = field(default_factory=list)
    optional: list[str] = field(default_factory=list)

    @property
    def repo(self) -> str:
        return f"nslab/{self.name}"


@dataclass
class BuildResult:
    name: str
    tag: str  # nslab/<name>:<hash12>
    hash: str
    cached: bool
    seconds: float
    log: Path | None = None


@dataclass
class ImageStatus:
    name: str
    tag: str
    built: bool  # the hash tag exists
    latest_current: bool  # nslab/<name>:latest points at it
    size_mb: float | None = None
    created: str | None = None


# --- discovery and hashing ------------------------------------------------------


def images_dir() -> Path:
    return Path(os.environ.get("NSLAB_IMAGES_DIR", REPO_ROOT / "images"))


def discover(root: Path | None = None) -> dict[str, ImageSpec]:
    """All images under `root`: base first, then the rest in parent order."""
    root = root or images_dir()
    if not (root / "base" / "packages.txt").is_file():
        raise NslabError(f"{root}/base/packages.txt is missing: the base image cannot be built")
    specs = {"base": ImageSpec("base", root / "base", None)}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "base"):
        if not (d / "Dockerfile").is_file():
            continue
        if not re.match(r"^[a-z0-9][a-z0-9_.-]*$", d.name):
            raise NslabError(f"{d}: image names use lowercase letters, digits, '_', '.', '-'")
        specs[d.name] = _read_manifest(d)
    for s in specs.values():
        if s.parent is not None and s.parent not in specs:
            raise NslabError(
                f"{s.dir}/image.yaml: from: {s.parent!r} is not an image in {root} "
                f"(known: {', '.join(specs)})"
            )
    return {n: specs[n] for n in _parent_order(specs)}


def _read_manifest(d: Path) -> ImageSpec:
    path = d / "image.yaml"
    data: dict = {}
    if path.is_file():
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise NslabError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise NslabError(f"{path}: must be a mapping with keys {sorted(MANIFEST_KEYS)}")
        unknown = set(data) - MANIFEST_KEYS
        if unknown:
            raise NslabError(
                f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(MANIFEST_KEYS)}"
            )
    for key in ("include", "optional"):
        v = data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise NslabError(f"{path}: {key}: must be a list of repository paths")
        for p in v:
            if p.startswith("/") or ".." in Path(p).parts:
                raise NslabError(f"{path}: {key}: {p!r} must be a path inside the repository")
    parent = data.get("from", "base")
    if not isinstance(parent, str):
        raise NslabError(f"{path}: from: must be an image name such as base")
    return ImageSpec(
        d.name, d, parent, list(data.get("include", [])), list(data.get("optional", []))
    )


def _parent_order(specs: dict[str, ImageSpec]) -> list[str]:
    order: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in order:
            return
        if n in visiting:
            raise NslabError(f"{specs[n].dir}/image.yaml: 'from' forms a cycle through {n!r}")
        visiting.add(n)
        if specs[n].parent:
            visit(specs[n].parent)
        visiting.discard(n)
        order.append(n)

    for n in specs:
        visit(n)
    return order


def packages(root: Path | None = None) -> list[str]:
    """Package list of the base: one per line, '#' comments."""
    path = (root or images_dir()) / "base" / "packages.txt"
    pkgs = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not re.match(r"^[a-z0-9][a-z0-9+.-]+$", line):
            raise NslabError(f"{path}:{lineno}: {line!r} is not a Debian package name")
        pkgs.append(line)
    return sorted(set(pkgs))


def _files(spec: ImageSpec, repo_root: Path) -> Iterator[tuple[str, Path]]:
    """(name in the build context, file) for every input of an image, sorted."""
    out: list[tuple[str, Path]] = []
    for f in spec.dir.rglob("*"):
        if f.is_file() and not _SKIP & set(f.parts) and f.suffix != ".pyc":
            out.append((f.relative_to(spec.dir).as_posix(), f))
    for rel in spec.include + spec.optional:
        src = repo_root / rel
        if not src.exists():
            if rel in spec.optional:
                continue
            raise NslabError(
                f"{spec.dir}/image.yaml: include: {rel!r} does not exist in {repo_root} "
                "(fix the path, or list it under optional:)"
            )
        files = [src] if src.is_file() else sorted(src.rglob("*"))
        for f in files:
            if f.is_file() and not _SKIP & set(f.parts) and f.suffix != ".pyc":
                out.append(("repo/" + f.relative_to(repo_root).as_posix(), f))
    yield from sorted(set(out))


def input_hash(
    spec: ImageSpec,
    parent_hash: str | None,
    *,
    base_source: str = "local",
    repo_root: Path = REPO_ROOT,
) -> str:
    """Hash of everything an image is made of; its tag is the first 12 hex digits."""
    h = hashlib.sha256()

    def feed(*parts: str | bytes) -> None:
        for p in parts:
            b = p.encode() if isinstance(p, str) else p
            h.update(len(b).to_bytes(8, "big") + b)

    feed(FORMAT, spec.name)
    if spec.parent is None:
        feed(base_source, SUITE, "minbase", *packages(spec.dir.parent))
        if base_source == "registry":
            reg = spec.dir / "Dockerfile.registry"
            if not reg.is_file():
                raise NslabError(f"{reg} is missing: the registry base cannot be built")
            feed(reg.read_bytes())
    else:
        feed("parent", parent_hash or "")
        for name, f in _files(spec, repo_root):
            feed(name, oct(f.stat().st_mode & 0o111), f.read_bytes())
    return h.hexdigest()


def plan(
    root: Path | None = None, *, base_source: str = "local", repo_root: Path = REPO_ROOT
) -> dict[str, tuple[ImageSpec, str]]:
    """name -> (spec, hash) for every image, parents before children."""
    out: dict[str, tuple[ImageSpec, str]] = {}
    for name, spec in discover(root).items():
        parent_hash = out[spec.parent][1] if spec.parent else None
        out[name] = (
            spec,
            input_hash(spec, parent_hash, base_source=base_source, repo_root=repo_root),
        )
    return out


def tag_of(spec: ImageSpec, digest: str) -> str:
    return f"{spec.repo}:{digest[:12]}"


# --- the Debian mirror ---------------------------------------------------------------


def debian_mirror(suite: str = SUITE, apt_dir: Path = Path("/etc/apt")) -> str:
    """$NSLAB_DEBIAN_MIRROR, else the first apt source of `suite` on this machine
    (sources.list and deb822 *.sources), so nothing site-specific is hard-coded."""
    env = os.environ.get("NSLAB_DEBIAN_MIRROR")
    if env:
        return env
    files = [apt_dir / "sources.list"]
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        files += sorted(d.iterdir())
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if (
                    "deb" in fields.get("types", "").split()
                    and suite in fields.get("suites", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and fields.get("uris")
                ):
                    return fields["uris"].split()[0]
        elif f.suffix == ".list":
            for line in text.splitlines():
                line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(line) >= 3 and line[0] == "deb" and line[2] == suite:
                    return line[1]
    raise NslabError(
        f"no apt source for Debian {suite} on this machine: set NSLAB_DEBIAN_MIRROR "
        "(e.g. NSLAB_DEBIAN_MIRROR=http://deb.debian.org/debian) or use `--base registry`"
    )


# --- running build steps --------------------------------------------------------------


@contextmanager
def _lock(progress: Progress) -> Iterator[None]:
    """One build at a time on this machine (concurrent test runs share the cache)."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress("waiting for another image build on this machine to finish")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(
    cmd: list[str],
    log: Path,
    progress: Progress,
    show: Callable[[str], bool],
    *,
    stdin: int | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 1800,
) -> None:
    """Run cmd with its output appended to `log`; lines picked by `show` go to
    progress, and a heartbeat every 15 s says it is still working."""
    with open(log, "a") as fh:
        fh.write(f"\n$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            cwd=cwd,
            env=env,
        )
        last = [time.monotonic()]
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                fh.write(line)
                line = line.rstrip()
                tail = (tail + [line])[-15:]
                now = time.monotonic()
                if show(line):
                    progress(f"  {line}")
                    last[0] = now
                elif now - last[0] > 15:
                    progress(f"  ... {line[:100]}")
                    last[0] = now
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0:
        raise NslabError(
            f"`{shlex.join(cmd[:3])} ...` failed (exit {rc}); last lines:\n  "
            + "\n  ".join(tail)
            + f"\nfull log: {log}"
        )


def _image_hash_label(tag: str) -> str | None:
    proc = docker(
        "image", "inspect", "--format", '{{index .Config.Labels "nslab.inputs"}}', tag, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _build_base_local(
    tag: str, digest: str, pkgs: list[str], log: Path, progress: Progress
) -> None:
    if not shutil.which("debootstrap"):
        raise NslabError("debootstrap is not installed: run `sudo bash scripts/provision.sh`")
    mirror = debian_mirror()
    progress(f"  debootstrap {SUITE} from {mirror} ({len(pkgs)} extra packages, about a minute)")
    # /var/tmp, not /tmp: /tmp may be a noexec tmpfs where the chroot cannot run.
    work = Path(
        tempfile.mkdtemp(prefix="nslab-base-", dir=os.environ.get("NSLAB_BUILD_TMP", "/var/tmp"))
    )
    rootfs = work / "rootfs"
    cache = Path("/var/cache/nslab/debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _run_logged(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(pkgs)}",
                f"--cache-dir={cache}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            log,
            progress,
            lambda ln: ln.startswith(
                (
                    "I: Retrieving Release",
                    "I: Validating Packages",
                    "I: Extracting base-files",
                    "I: Installing core",
                    "I: Unpacking the base",
                    "I: Configuring the base",
                    "I: Base system installed",
                )
            ),
        )
        # Smaller image, and no stale package lists baked in.
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        progress("  docker import")
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        changes = [
            "LABEL nslab.managed=1",
            "LABEL nslab.image=base",
            f"LABEL nslab.inputs={digest}",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["sleep", "infinity"]',
        ]
        cmd = [docker_bin(), "import"]
        for c in changes:
            cmd += ["--change", c]
        try:
            _run_logged([*cmd, "-", tag], log, progress, lambda ln: False, stdin=tar.stdout)
        finally:
            assert tar.stdout is not None
            tar.stdout.close()
            if tar.wait() != 0:
                raise NslabError(f"packing the base rootfs failed; see {log}")
    finally:
        _remove_tree(work, progress)


def _mounts_under(path: Path) -> list[str]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        mnt = line.split()[1].replace("\\040", " ")
        if mnt == str(path) or mnt.startswith(f"{path}/"):
            out.append(mnt)
    return out


def _remove_tree(work: Path, progress: Progress) -> None:
    """Remove the rootfs work dir. debootstrap bind-mounts host /dev entries and
    mounts /proc and /sys in the target; if it was killed they are still
    mounted, and deleting through them would reach the host: unmount first,
    and leave the dir in place if anything stays mounted."""
    for mnt in sorted(_mounts_under(work), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mnt], capture_output=True, timeout=30)
    left = _mounts_under(work)
    if left:
        progress(f"  left {work} in place: still mounted there: {', '.join(left)}")
        return
    shutil.rmtree(work, ignore_errors=True)


def _docker_build(
    spec: ImageSpec,
    tag: str,
    digest: str,
    build_args: dict[str, str],
    context: Path,
    dockerfile: str,
    log: Path,
    progress: Progress,
    network: str = "none",
) -> None:
    cmd = [docker_bin(), "build", "--rm", "--force-rm", "--network", network]
    cmd += ["-f", str(context / dockerfile)]
    cmd += ["--label", "nslab.managed=1", "--label", f"nslab.image={spec.name}"]
    cmd += ["--label", f"nslab.inputs={digest}", "-t", tag]
    for k, v in build_args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    cmd.append(str(context))
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # classic builder: works without buildx
    _run_logged(cmd, log, progress, lambda ln: ln.startswith("Step "), env=env)


def _make_context(spec: ImageSpec, repo_root: Path) -> Path:
    ctx = Path(tempfile.mkdtemp(prefix=f"nslab-ctx-{spec.name}-"))
    for name, f in _files(spec, repo_root):
        dst = ctx / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    (ctx / "repo").mkdir(exist_ok=True)  # so `COPY repo/ ...` works with nothing included
    return ctx


# --- the public entry points -------------------------------------------------------------


def build(
    names: list[str] | None = None,
    *,
    force: bool = False,
    base_source: str | None = None,
    root: Path | None = None,
    repo_root: Path = REPO_ROOT,
    log_dir: Path | None = None,
    progress: Progress = print,
) -> list[BuildResult]:
    """Build the named images (all with None) and their parents; images whose
    hash tag exists are cache hits. Returns one result per image considered."""
    base_source = base_source or os.environ.get("NSLAB_BASE_SOURCE", "local")
    if base_source not in BASE_SOURCES:
        raise NslabError(f"base source {base_source!r}: use one of {', '.join(BASE_SOURCES)}")
    require_docker()
    p = plan(root, base_source=base_source, repo_root=repo_root)
    wanted = list(p) if not names else names
    for n in wanted:
        if n not in p:
            raise NslabError(f"no image {n!r} in {root or images_dir()} (known: {', '.join(p)})")
    needed: list[str] = []
    for n in wanted:
        chain = []
        while n is not None:
            chain.append(n)
            n = p[n][0].parent
        for c in reversed(chain):
            if c not in needed:
                needed.append(c)
    log_dir = Path(log_dir or os.environ.get("NSLAB_IMAGES_LOG_DIR", DEFAULT_LOG_DIR))
    log_dir.mkdir(parents=True, exist_ok=True)
    results: list[BuildResult] = []
    with _lock(progress):
        for n in (n for n in p if n in needed):
            spec, digest = p[n]
            results.append(
                _build_one(spec, digest, p, force, base_source, repo_root, log_dir, progress)
            )
    return results


def _build_one(
    spec: ImageSpec,
    digest: str,
    p: dict[str, tuple[ImageSpec, str]],
    force: bool,
    base_source: str,
    repo_root: Path,
    log_dir: Path,
    progress: Progress,
) -> BuildResult:
    t0 = time.monotonic()
    tag = tag_of(spec, digest)
    if not force and _image_hash_label(tag) == digest:
        docker("tag", tag, f"{spec.repo}:latest")
        progress(f"{spec.name}: cached {tag}")
        return BuildResult(spec.name, tag, digest, True, time.monotonic() - t0)
    log = log_dir / f"{spec.name}-{digest[:12]}.log"
    log.write_text(f"# nslab image {spec.name} {tag}\n")
    progress(f"{spec.name}: building {tag} (log: {log})")
    if spec.parent is None and base_source == "local":
        _build_base_local(tag, digest, packages(spec.dir.parent), log, progress)
    elif spec.parent is None:
        ctx = Path(tempfile.mkdtemp(prefix="nslab-ctx-base-"))
        try:
            shutil.copy2(spec.dir / "Dockerfile.registry", ctx / "Dockerfile")
            (ctx / "packages.txt").write_text("\n".join(packages(spec.dir.parent)) + "\n")
            try:
                _docker_build(
                    spec, tag, digest, {}, ctx, "Dockerfile", log, progress, network="default"
                )
            except NslabError as exc:
                raise NslabError(
                    f"{exc}\nthe registry base needs Docker Hub; without one, build the base "
                    "offline: `nslab images build --base local` (the default)"
                ) from exc
        finally:
            shutil.rmtree(ctx, ignore_errors=True)
    else:
        parent_spec, parent_digest = p[spec.parent]
        ctx = _make_context(spec, repo_root)
        try:
            base_arg = {"BASE": tag_of(parent_spec, parent_digest)}
            _docker_build(spec, tag, digest, base_arg, ctx, "Dockerfile", log, progress)
        finally:
            shutil.rmtree(ctx, ignore_errors=True)
    if _image_hash_label(tag) != digest:
        raise NslabError(f"{spec.name}: the build finished but {tag} is not labelled; see {log}")
    docker("tag", tag, f"{spec.repo}:latest")
    dt = time.monotonic() - t0
    progress(f"{spec.name}: built {tag} in {dt:.0f} s")
    return BuildResult(spec.name, tag, digest, False, dt, log)


def status(
    root: Path | None = None, *, base_source: str | None = None, repo_root: Path = REPO_ROOT
) -> list[ImageStatus]:
    """For `nslab images list`: each image's current tag and whether it is built."""
    base_source = base_source or os.environ.get("NSLAB_BASE_SOURCE", "local")
    require_docker()
    out = []
    for spec, digest in plan(root, base_source=base_source, repo_root=repo_root).values():
        tag = tag_of(spec, digest)
        proc = docker(
            "image", "inspect", "--format", "{{.Id}}\t{{.Size}}\t{{.Created}}", tag, check=False
        )
        built = proc.returncode == 0
        size = created = None
        latest = False
        if built:
            iid, sz, created = proc.stdout.strip().split("\t")
            size = int(sz) / 1e6
            created = created[:19]
            lp = docker(
                "image", "inspect", "--format", "{{.Id}}", f"{spec.repo}:latest", check=False
            )
            latest = lp.returncode == 0 and lp.stdout.strip() == iid
        out.append(ImageStatus(spec.name, tag, built, latest, size, created))
    return out


def resolve(ref: str, *, build_missing: bool = True, progress: Progress = print) -> str:
    """Map a topology's `image:` to what docker should run. `nslab/<name>` and
    `nslab/<name>:latest` of a known image become its current hash tag (built
    first when missing); anything else is returned unchanged."""
    m = re.match(r"^nslab/([a-z0-9][a-z0-9_.-]*)(?::latest)?$", ref)
    if not m:
        return ref
    p = plan()
    if m.group(1) not in p:
        return ref
    spec, digest = p[m.group(1)]
    tag = tag_of(spec, digest)
    if _image_hash_label(tag) != digest:
        if not build_missing:
            raise NslabError(f"image {tag} is not built: run `nslab images build {spec.name}`")
        build([spec.name], progress=progress)
    return tag


def prune(
    root: Path | None = None,
    *,
    base_source: str | None = None,
    repo_root: Path = REPO_ROOT,
    progress: Progress = print,
) -> list[str]:
    """Untag old builds: tags of images in `root` that are neither the current
    hash tag nor :latest. Tags a container still uses are kept (docker refuses).
    Returns the tags removed."""
    base_source = base_source or os.environ.get("NSLAB_BASE_SOURCE", "local")
    require_docker()
    p = plan(root, base_source=base_source, repo_root=repo_root)
    current = {tag_of(spec, digest) for spec, digest in p.values()}
    listing = docker(
        "image", "ls", "--filter", "label=nslab.managed=1", "--format", "{{.Repository}}:{{.Tag}}"
    )
    removed = []
    for ref in listing.stdout.split():
        repo, _, tag = ref.rpartition(":")
        if not repo.startswith("nslab/") or repo[len("nslab/") :] not in p:
            continue  # not one of the images of this tree
        if ref in current or tag in ("latest", "<none>"):
            continue
        proc = docker("rmi", ref, check=False)
        if proc.returncode == 0:
            removed.append(ref)
            progress(f"removed {ref}")
        else:
            progress(f"kept {ref}: {proc.stderr.strip()}")
    return removed
