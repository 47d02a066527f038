"""The LLM pod kind (nslab/kinds/llm_pod.py): a host, a switch and an
llm-pod running the tiny model; a completion requested from the host's
namespace comes back from the pod's server, through the emulated link.
And bad keys get file:line:key errors before anything is built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TOPO = """
name: l5k
topology:
  nodes:
    sw: {kind: bridge}
    h1: {kind: linux}
    l5llm:
      kind: llm-pod
      model: tiny
      port: %s
      max_num_seqs: 4
      num_blocks: 64
      prefix_caching: %s
      threads: 1
  links:
    - endpoints: ["h1:eth0", "sw:eth1"]
    - endpoints: ["l5llm:eth0", "sw:eth2"]
"""
# The stock openai client, from inside h1's namespace.
CLIENT = """
import sys, openai
c = openai.OpenAI(base_url=f"http://{sys.argv[1]}:8051/v1", api_key="none", max_retries=2)
r = c.completions.create(model="tiny", prompt="hello", max_tokens=5, temperature=0)
print("COMPLETION", r.usage.completion_tokens, r.choices[0].finish_reason)
"""


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=150)  # fmt: skip


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")
def test_a_completion_from_a_host_through_the_topology(tmp_path):
    (tmp_path / "t.yaml").write_text(TOPO % (8051, "true"))
    code = f"""
import sys
from nslab.engine import up
with up({str(tmp_path / "t.yaml")!r}, progress=None) as lab:
    out = lab.exec("h1", [sys.executable, "-c", {CLIENT!r}, lab.ip("l5llm")], timeout=60)
    print(out.stdout, out.stderr[-1500:])
"""
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "COMPLETION 5 length" in r.stdout, r.stdout[-2000:]


def test_bad_keys_get_file_line_key_errors(tmp_path):
    bad = TOPO % (70000, "maybe")
    bad = bad.replace("model: tiny", "model: gpt5").replace("max_num_seqs: 4", "max_num_seqs: 0")
    (tmp_path / "t.yaml").write_text(bad)
    r = _run(f"from nslab.topo import load; load({str(tmp_path / 't.yaml')!r})", tmp_path)
    assert r.returncode != 0
    err = r.stderr
    for words in (
        "model: unknown model 'gpt5' — use one of tiny, smollm2",
        "port: must be 1..65535 (got 70000)",
        "max_num_seqs: must be an integer >= 1 (got 0)",
        "prefix_caching: must be true or false (got 'maybe')",
    ):
        assert words in err, err
    assert "t.yaml:" in err and "l5llm" in err, err
