# Hostile: a conftest.py in the submission that would pass every check if
# pytest ever collected it, and forges a results file next to it.
import json
import pathlib

import pytest

pathlib.Path("results.json").write_text(json.dumps({"score": 999, "max_score": 54}))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    rep.outcome = "passed"
