"""A lab with a network (through the engine): a student's service runs
sandboxed inside a node's namespace and checks reach it from another node."""

from __future__ import annotations

import grading_support
import pytest
from grading_support import make_lab

from nslab.grading import runner
from nslab.labs import load_lab

pytestmark = pytest.mark.root
grading_env = grading_support.grading_env  # the shared fixture

TOPO = """
name: two
topology:
  nodes:
    h1: {kind: linux}
    h2: {kind: linux}
  links:
    - endpoints: ["h1:eth0", "h2:eth0"]
"""

CHECKS = {
    "test_net.py": '''
    import pytest

    @pytest.mark.points(2)
    def test_reachable(lab, ping, record):
        """h1 reaches h2"""
        r = ping("h1", "h2", count=2, interval_s=0.1)
        record.value("replies", r.received)
        assert r.received == 2, f"expected 2 replies, observed {r.received}"

    def test_service_answers(lab, probe):
        """the student's web server on h2 answers h1"""
        r = probe.http("h1", f"http://{lab.ip('h2')}:{lab.ports['web']}/hello.txt")
        assert r.status == 200 and r.text == "hi\\n", f"expected 200 'hi', observed {r}"

    def test_service_is_sandboxed(lab):
        """the service runs as the student user, not root"""
        out = lab.exec("h2", ["ps", "-o", "user=", "-o", "args=", "-e"]).stdout
        # the sandbox's own wrappers (bwrap holds the student's view) are root's
        wrappers = ("nslab.grading", "bwrap ")
        line = next(l for l in out.splitlines() if "http.server" in l and not any(w in l for w in wrappers))
        assert line.split()[0] == lab.user, line
    '''
}


def test_service_in_a_node_namespace(grading_env, tmp_path):
    lab = make_lab(
        tmp_path,
        "net",
        """
        title: Net
        name: nt
        topology: topology.yaml
        submit: [hello.txt]
        setup_timeout: 120
        services:
          - name: web
            node: h2
            command: python3 -m http.server {port}
            port: auto
            ready: {port: true, timeout: 20}
        """,
        CHECKS,
        {"topology.yaml": TOPO},
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "hello.txt").write_text("hi\n")
    r = runner.grade_one(load_lab(lab), sub, tmp_path / "out", user_base=grading_env)
    assert [t["outcome"] for t in r.tests] == ["passed"] * 3, [t["reason"] for t in r.tests]
    assert r.score == 4
