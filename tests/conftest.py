"""Shared fixtures of nslab's test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A student release (`nslab release student`) writes RELEASE at its root and
# has no labs/*/solution/ or labs/*/grader/. In the instructor's repository a
# missing solution is a failure (test_labs.py); in a release it is expected.
IN_RELEASE = (REPO / "RELEASE").is_file()


def pytest_configure(config: pytest.Config) -> None:
    # a TERM (a runner's timeout) tears the fixtures down like Ctrl-C: their
    # namespaces, switches and processes do not outlive the run
    from nslab.process import interrupt_on_signals

    interrupt_on_signals()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not IN_RELEASE:
        return
    skip = pytest.mark.skip(
        reason="student release: reference solutions and grader-only files "
        "(labs/*/solution/, labs/*/grader/) stay in the course's private repository"
    )
    for item in items:
        if item.get_closest_marker("needs_solution"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def nslab_images() -> dict[str, str]:
    """nslab's container images, built once per test run: name -> hash tag
    (e.g. {"base": "nslab/base:1a2b...", "nf": "nslab/nf:3c4d..."}).
    Unchanged inputs make this a cache hit (well under a second); the first
    build on a fresh machine debootstraps the base (about a minute)."""
    from nslab import containers, images

    if os.geteuid() != 0:
        pytest.skip("container images need root (the Docker engine)")
    if not containers.docker_available():
        pytest.skip("the Docker engine is not running (sudo bash scripts/provision.sh)")
    results = images.build(progress=lambda line: print(f"[images] {line}", flush=True))
    return {r.name: r.tag for r in results}
