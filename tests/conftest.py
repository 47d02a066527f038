"""Shared fixtures of nslab's test suite."""

from __future__ import annotations

import os

import pytest


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
