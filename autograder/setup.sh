#!/usr/bin/env bash
# Gradescope's setup.sh: runs once, as root, when Gradescope builds the
# autograder image from the zip made by `sudo nslab autograder bundle`
# (unpacked into /autograder/source; AUTOGRADER_ROOT replaces /autograder).
#
# MODE=grade (lab.env): install the kit bundled in source/kit like any other
# machine (scripts/provision.sh). NSLAB_VENV=DIR reuses an installed kit's
# venv instead (a runner image with the kit preinstalled; the tests).
# MODE=precomputed: nothing to install; run_autograder only copies results.
set -euo pipefail
AG="${AUTOGRADER_ROOT:-/autograder}"
SRC="$AG/source"
# shellcheck source=/dev/null
[ -f "$SRC/lab.env" ] && . "$SRC/lab.env"
if [ "${MODE:-grade}" = precomputed ]; then
  echo "[setup] MODE=precomputed: run_autograder copies results graded on the course's VM"
  exit 0
fi
KIT="$SRC/kit"
if [ ! -f "$KIT/scripts/provision.sh" ]; then
  echo "[setup] no kit in $KIT: build the zip with \`sudo nslab autograder bundle LAB -o LAB.zip\`" >&2
  exit 1
fi
if [ -n "${NSLAB_VENV:-}" ]; then
  ln -sfn "$NSLAB_VENV" "$KIT/.venv"
  echo "[setup] using the installed venv $NSLAB_VENV"
else
  bash "$KIT/scripts/provision.sh"
fi
"$KIT/.venv/bin/nslab" lab list >/dev/null
echo "[setup] ready to grade ${LAB:-?}"
