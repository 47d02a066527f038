#!/usr/bin/env bash
# Gradescope's setup.sh for a *self-hosted* runner that can emulate networks:
# install the kit like any other machine. (Hosted containers cannot; there
# run_autograder only copies results graded on a VM.)
set -euo pipefail
git clone --depth 1 "${NSLAB_REPO:?set NSLAB_REPO to the course's nslab repository}" /opt/nslab
bash /opt/nslab/scripts/provision.sh
