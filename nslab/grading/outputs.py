"""What grading produces: Gradescope's results.json, JUnit XML, a
self-contained HTML report (with inline SVG plots) and the batch summary.csv."""

from __future__ import annotations

import csv
import html
import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nslab.grading.result import SubmissionResult


def _output(t: dict[str, Any]) -> str:
    """The feedback text of one check: its reason, notes and observed numbers."""
    parts = []
    if t.get("outcome") == "passed":
        parts.append(
            "passed"
            if t["score"] >= t["max_score"]
            else f"partial credit: {t['score']:g}/{t['max_score']:g}"
        )
    if t.get("reason"):
        parts.append(t["reason"])
    parts += t.get("notes", [])
    vals = t.get("values") or {}
    if vals:
        parts.append(
            "observed: "
            + ", ".join(
                f"{k} = {_num(v['value'])}{' ' + v['unit'] if v['unit'] else ''}"
                for k, v in vals.items()
            )
        )
    return "\n".join(parts)


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def results_json(res: SubmissionResult) -> dict[str, Any]:
    """Gradescope's autograder results format."""
    tests = [
        {
            "name": t["name"],
            "score": t["score"],
            "max_score": t["max_score"],
            "output": _output(t),
            "visibility": t["visibility"],
            "status": "passed"
            if t["outcome"] == "passed" and t["score"] >= t["max_score"]
            else "failed",
        }
        for t in res.tests
    ]
    doc: dict[str, Any] = {
        "score": res.score,
        "max_score": res.max_score,
        "execution_time": res.execution_time,
        "output": _summary_line(res),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "tests": tests,
    }
    if res.cpu_contention_pct is not None:  # Gradescope keeps extra_data, shows nothing of it
        doc["extra_data"] = {"cpu_contention_pct": res.cpu_contention_pct}
    return doc


def _summary_line(res: SubmissionResult) -> str:
    head = f"{res.lab_title or res.lab_id}: {res.score:g}/{res.max_score:g} points"
    return head + (f"\n{res.output}" if res.output else "")


def junit_xml(res: SubmissionResult) -> str:
    suite = ET.Element(
        "testsuite",
        name=res.lab_id or "nslab",
        tests=str(len(res.tests)),
        failures=str(sum(t["outcome"] == "failed" for t in res.tests)),
        errors=str(sum(t["outcome"] in ("error", "timeout") for t in res.tests)),
        skipped=str(sum(t["outcome"] == "skipped" for t in res.tests)),
        time=f"{res.execution_time:.2f}",
    )
    props = ET.SubElement(suite, "properties")
    for k, v in (
        ("submission", res.name),
        ("status", res.status),
        ("score", f"{res.score:g}"),
        ("max_score", f"{res.max_score:g}"),
    ):
        ET.SubElement(props, "property", name=k, value=v)
    for t in res.tests:
        classname, _, name = t["nodeid"].rpartition("::")
        case = ET.SubElement(
            suite,
            "testcase",
            classname=classname.replace("/", "."),
            name=name,
            time=f"{t.get('duration_s', 0):.2f}",
        )
        if t["outcome"] == "failed":
            ET.SubElement(case, "failure", message=t["reason"][:200]).text = _output(t)
        elif t["outcome"] in ("error", "timeout"):
            ET.SubElement(case, "error", message=t["reason"][:200]).text = _output(t)
        elif t["outcome"] == "skipped":
            ET.SubElement(case, "skipped", message=t["reason"][:200])
        ET.SubElement(
            case, "system-out"
        ).text = f"score {t['score']:g}/{t['max_score']:g} visibility {t['visibility']}"
    if res.output:
        ET.SubElement(suite, "system-err").text = res.output
    ET.indent(suite)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
    )


def _svg(plot: dict[str, Any]) -> str:
    """A plot as inline SVG (matplotlib, no files, no network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    try:
        if plot["kind"] == "cdf":
            xs = sorted(plot["samples"])
            if xs:
                ys = [(i + 1) / len(xs) for i in range(len(xs))]
                ax.step(xs, ys, where="post")
            ax.set_xlabel(f"latency ({plot.get('unit', 'ms')})")
            ax.set_ylabel("fraction of samples")
            ax.set_ylim(0, 1.02)
        else:
            ax.plot(plot["x"], plot["y"], marker=".")
            ax.set_xlabel(plot.get("xlabel", ""))
            ax.set_ylabel(plot.get("ylabel", ""))
        ax.set_title(plot.get("title", ""), fontsize=10)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        text = buf.getvalue()
        return text[text.index("<svg") :]
    finally:
        plt.close(fig)


_CSS = """
body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}
.passed{color:#176317}.failed,.error,.timeout{color:#a31515}.partial,.skipped{color:#8a6100}
pre{white-space:pre-wrap;margin:0;font-size:.9em}.vis{color:#777;font-size:.85em}
section{margin:1.5rem 0;padding-top:.5rem;border-top:2px solid #eee}
"""


def report_html(res: SubmissionResult) -> str:
    e = html.escape
    rows = []
    sections = []
    for i, t in enumerate(res.tests):
        partial = t["outcome"] == "passed" and t["score"] < t["max_score"]
        cls = "partial" if partial else t["outcome"]
        label = "partial" if partial else t["outcome"]
        rows.append(
            f"<tr><td><a href='#c{i}'>{e(t['name'])}</a> <span class='vis'>{e(t['visibility'])}</span></td>"
            f"<td class='{cls}'>{e(label)}</td><td>{t['score']:g} / {t['max_score']:g}</td></tr>"
        )
        plots = []
        for p in t.get("plots", []):
            try:
                plots.append(_svg(p))
            except Exception as exc:  # a broken plot must not lose the report
                plots.append(
                    f"<p>plot {e(p.get('title', ''))} could not be drawn: {e(str(exc))}</p>"
                )
        sections.append(
            f"<section id='c{i}'><h3>{e(t['name'])} <span class='{cls}'>{e(label)}</span></h3>"
            f"<p class='vis'>{e(t['nodeid'])} · {t.get('duration_s', 0):.1f} s</p>"
            f"<pre>{e(_output(t)) or 'passed'}</pre>{''.join(plots)}</section>"
        )
    status = "" if res.status == "ok" else f"<p class='error'><b>{e(res.status)}</b></p>"
    msg = f"<pre>{e(res.output)}</pre>" if res.output else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(res.name)} – {e(res.lab_id)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{e(res.lab_title or res.lab_id)}</h1>"
        f"<p>Submission <b>{e(res.name)}</b>: <b>{res.score:g} / {res.max_score:g}</b> points, "
        f"graded in {res.execution_time:.1f} s ({e(res.visibility)} checks).</p>{status}{msg}"
        f"<table><tr><th>check</th><th>result</th><th>points</th></tr>{''.join(rows)}</table>"
        f"{''.join(sections)}</body></html>\n"
    )


def write_summary(results: list[SubmissionResult], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "submission",
                "path",
                "status",
                "score",
                "max_score",
                "passed",
                "failed",
                "execution_time_s",
                "cpu_contention_pct",
                "message",
            ]
        )
        for r in results:
            passed = sum(t["outcome"] == "passed" for t in r.tests)
            w.writerow(
                [
                    r.name,
                    r.submission,
                    r.status,
                    f"{r.score:g}",
                    f"{r.max_score:g}",
                    passed,
                    len(r.tests) - passed,
                ]
                + [
                    f"{r.execution_time:.2f}",
                    "" if r.cpu_contention_pct is None else f"{r.cpu_contention_pct:g}",
                    r.output.splitlines()[0] if r.output else "",
                ]
            )


def _key_columns(name: str) -> tuple[str, str]:
    """(email, id) from a result folder name: the student key the TA gave
    the submission folder (an email address, or a student/login id)."""
    return (name, "") if "@" in name else ("", name)


def write_score_csvs(results: list[SubmissionResult], out: Path, title: str) -> list[Path]:
    """Score files for platforms whose containers cannot grade the lab:
    gradescope-scores.csv (the columns of Gradescope's "Upload Scores" template:
    Name, SID, Email, Total Score) and canvas-scores.csv (Canvas' gradebook
    import: Student, ID, SIS User ID, SIS Login ID, Section, then one column
    per assignment). Rows are keyed by the submission folder's name."""
    gs, cv = out / "gradescope-scores.csv", out / "canvas-scores.csv"
    with open(gs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Name", "SID", "Email", "Total Score"])
        for r in results:
            email, sid = _key_columns(r.name)
            w.writerow(["", sid, email, f"{r.score:g}"])
    with open(cv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Student", "ID", "SIS User ID", "SIS Login ID", "Section", title])
        top = max((r.max_score for r in results), default=0)
        w.writerow(["Points Possible", "", "", "", "", f"{top:g}"])
        for r in results:
            w.writerow(["", "", "", r.name, "", f"{r.score:g}"])
    return [gs, cv]
