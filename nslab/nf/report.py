"""The per-NF report: what an NF saw and did, written on exit.

`<nf>.report` is JSON (for graders and scripts); `<nf>.report.txt` is the
same as a table (for people). Layout of the JSON:

    {"nf": "lb1", "started": <unix time>, "duration_s": 12.3,
     "interfaces": {"eth0": {"in_packets", "in_bytes", "in_pps", "out_packets", "out_bytes", "out_pps"}},
     "classes":   {"<class>": {"packets", "bytes", "rate_pps"}},   # Counter(<class>) elements
     "requests":  {"PUT diverted": 2, ...},                          # decisions of an element (e.g. an IDS)
     "drops":     {"<element or reason>": n},  "total_drops": n,
     "flows":     {"<rewriter>": live flow entries}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from nslab.errors import NslabError


def merge(report: dict[str, Any], part: dict[str, Any]) -> None:
    """Add one element's stats() into the report (numbers under equal keys add up)."""
    for section, values in part.items():
        dst = report.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict):
                slot = dst.setdefault(k, {})
                for kk, vv in v.items():
                    slot[kk] = slot.get(kk, 0) + vv if isinstance(vv, int | float) else vv
            else:
                dst[k] = dst.get(k, 0) + v


def finish(report: dict[str, Any], duration: float) -> dict[str, Any]:
    """Fill in rates and totals."""
    report["duration_s"] = round(duration, 3)
    for s in ("interfaces", "classes", "requests", "drops", "flows"):
        report.setdefault(s, {})
    for st in report["interfaces"].values():
        for d in ("in", "out"):
            st.setdefault(f"{d}_packets", 0)
            st.setdefault(f"{d}_bytes", 0)
            st[f"{d}_pps"] = round(st[f"{d}_packets"] / duration, 1) if duration > 0 else 0.0
    report["total_drops"] = sum(report["drops"].values())
    return report


def table(report: dict[str, Any]) -> str:
    """The report as a human-readable table."""
    lines = [f"NF report: {report.get('nf', '?')} (ran {report.get('duration_s', 0)} s)", ""]
    lines.append(f"{'interface':<12}{'in pkts':>10}{'in pps':>10}{'out pkts':>10}{'out pps':>10}")
    for name, st in sorted(report.get("interfaces", {}).items()):
        lines.append(
            f"{name:<12}{st['in_packets']:>10}{st['in_pps']:>10}{st['out_packets']:>10}{st['out_pps']:>10}"
        )
    if report.get("classes"):
        lines += ["", f"{'traffic class':<36}{'packets':>10}{'rate pps':>10}"]
        for name, st in sorted(report["classes"].items()):
            n = st.get("packets", st.get("connections", 0))
            lines.append(f"{name:<36}{n:>10}{st.get('rate_pps', ''):>10}")
    if report.get("requests"):
        lines += ["", f"{'HTTP requests':<36}{'count':>10}"]
        for name, n in sorted(report["requests"].items()):
            lines.append(f"{name:<36}{n:>10}")
    lines += ["", f"{'drops':<36}{'packets':>10}"]
    for name, n in sorted(report.get("drops", {}).items()):
        lines.append(f"{name:<36}{n:>10}")
    lines.append(f"{'total':<36}{report.get('total_drops', 0):>10}")
    return "\n".join(lines) + "\n"


def check_path(path: str | Path) -> Path:
    """Refuse report paths whose atomic rename would replace something that is
    not a regular file (a device such as /dev/null, a fifo, a directory)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".txt")):
        if p.exists() and not p.is_file():
            raise NslabError(f"report path {p} exists and is not a regular file; choose another")
    return path


def write(report: dict[str, Any], path: str | Path) -> Path:
    """Write `path` (JSON) and `path`.txt (table) atomically; returns the JSON path."""
    path = check_path(path)
    txt = path.with_name(path.name + ".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    for p, text in (
        (path, json.dumps(report, indent=2, sort_keys=True) + "\n"),
        (txt, table(report)),
    ):
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, p)
    return path


def load(path: str | Path) -> dict[str, Any]:
    """Read a report written by `write`."""
    return json.loads(Path(path).read_text())
