#!/usr/bin/env bash
# Runs the whole suite. pytest exits 5 when it collects nothing: treat that as
# a failure, since a suite that tests nothing must not look green.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest tests "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
exit "$rc"
