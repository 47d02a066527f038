"""When the serving labs measure a policy again (nslab.serving.labcheck.
measured_on_time). The measurements here are stand-ins that carry only the
decision counts: the rule under test is which run counts, and the real runs
are exercised by tests/test_labs.py and tests/test_grading_hostile_serving.py.

Found on CI: a policy that answers every decision late left a backlog in the
grader's pod that had not drained 30 s later, and the re-measure's wait for
it failed the grading as a grader problem."""

from __future__ import annotations

from types import SimpleNamespace

from nslab.serving.labcheck import measured_on_time


def runs(*counts):
    it = iter(counts)
    calls = []

    def measure():
        calls.append(1)
        return SimpleNamespace(policy_counts=dict(next(it)))

    return measure, calls


def test_a_clean_run_is_measured_once():
    measure, calls = runs({"ok": 500, "late": 2})
    r = measured_on_time(measure)
    assert (len(calls), r.attempts, r.not_again) == (1, 1, "")


def test_late_answers_are_measured_again_and_the_last_run_counts():
    measure, calls = runs({"ok": 400, "late": 100}, {"ok": 499, "late": 1})
    r = measured_on_time(measure, ready=lambda: True)
    assert (len(calls), r.attempts, r.policy_counts["late"]) == (2, 2, 1)


def test_invalid_answers_are_never_measured_again():
    measure, calls = runs({"ok": 400, "late": 50, "invalid": 50})
    r = measured_on_time(measure)
    assert (len(calls), r.attempts) == (1, 1)


def test_an_undrained_backlog_keeps_the_late_run():
    measure, calls = runs({"ok": 10, "late": 490})
    asked = []
    r = measured_on_time(measure, ready=lambda: asked.append(1) or False)
    assert (len(calls), len(asked), r.attempts) == (1, 1, 1)
    assert r.policy_counts["late"] == 490 and "backlog" in r.not_again
