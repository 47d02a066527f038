"""The Gradescope autograder zip of one lab.

    build_bundle(repo, "00-sdn-warmup", Path("lab0.zip"))

Gradescope unpacks the zip into /autograder/source, runs setup.sh from there
once, and copies run_autograder to /autograder/ for every submission. So the
zip's root holds setup.sh, run_autograder and lab.env (LAB, MODE), the kit
under kit/ (the repository's files with only this lab, without its
solution/; its grader/ stays: hidden checks are graded) and, optionally,
precomputed/<key>.json: results graded on a VM, for hosted containers that
cannot emulate networks (MODE=precomputed).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from nslab.errors import NslabError
from nslab.labs import find_lab
from nslab.release import repo_files

MODES = ("grade", "precomputed")


def _add(zf: zipfile.ZipFile, src: Path, arcname: str) -> None:
    info = zipfile.ZipInfo.from_file(src, arcname)
    info.external_attr = (stat.S_IFREG | (src.stat().st_mode & 0o777)) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, src.read_bytes())


def build_bundle(
    repo: Path, lab: str, out: Path, precomputed: Path | None = None, mode: str = "grade"
) -> Path:
    repo = Path(repo).resolve()
    spec = find_lab(lab, repo / "labs")
    if mode not in MODES:
        raise NslabError(f"--mode must be one of {', '.join(MODES)}")
    if mode == "precomputed" and precomputed is None:
        raise NslabError("--mode precomputed needs --precomputed DIR (results graded on a VM)")
    pre = sorted(precomputed.glob("*.json")) if precomputed else []
    if precomputed and not pre:
        raise NslabError(
            f"{precomputed}: no <key>.json results (autograder/grade-batch writes them)"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w") as zf:
        for script in ("setup.sh", "run_autograder"):
            _add(zf, repo / "autograder" / script, script)
        zf.writestr("lab.env", f"LAB={spec.id}\nMODE={mode}\n")
        if mode == "grade":
            for rel in repo_files(repo):
                parts = rel.split("/")
                if parts[0] == ".git":
                    continue
                if parts[0] == "labs" and len(parts) > 2:
                    if parts[1] != spec.id or parts[2] == "solution":
                        continue
                _add(zf, repo / rel, f"kit/{rel}")
        for f in pre:
            _add(zf, f, f"precomputed/{f.name}")
    return out
