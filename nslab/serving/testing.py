"""pytest fixtures for the serving tests (import them into a test module)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nslab.serving import models


@pytest.fixture(scope="session")
def model_repo() -> Iterator[Path]:
    """A private model repository with the built-in models, removed afterwards;
    NSLAB_MODEL_REPO points to it so pod processes use it too."""
    path = Path(tempfile.mkdtemp(prefix="tsrv_models_"))
    old = os.environ.get("NSLAB_MODEL_REPO")
    os.environ["NSLAB_MODEL_REPO"] = str(path)
    try:
        for name in models.BUILTIN:
            models.ensure(name, path)
        yield path
    finally:
        if old is None:
            os.environ.pop("NSLAB_MODEL_REPO", None)
        else:
            os.environ["NSLAB_MODEL_REPO"] = old
        shutil.rmtree(path, ignore_errors=True)
