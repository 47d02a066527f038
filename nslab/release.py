"""The student release: the copy of the kit a course hands out.

    build_student_release(repo, out, labs=["00-sdn-warmup"])   # None: every lab

It copies the repository's files (what git tracks, plus untracked files git
does not ignore; without git, the tree minus build outputs) and leaves out
what only graders may see: every lab's `solution/` and `grader/` folders,
labs not asked for, and `.git`. It refuses a lab that keeps hidden material
where a release would ship it (a non-visible variant in lab.yaml, a
non-visible visibility mark in checks/): those belong in `grader/`. A
`RELEASE` file at the root tells the release's own tests where they are
(tests that need a solution skip there, saying why).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

from nslab.errors import NslabError
from nslab.labs import GRADER_DIR, find_lab, list_labs

MARKER = "RELEASE"
GRADER_ONLY = ("solution", GRADER_DIR)  # folders of a lab that never leave the instructor's repo
_NO_GIT_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".vagrant"}
_HIDDEN_MARK = re.compile(r"""mark\.visibility\(\s*["'](hidden|after_due_date|after_published)""")


def repo_files(repo: Path) -> list[str]:
    """Paths (relative, POSIX) of the repository's files."""
    if (repo / ".git").exists():
        r = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=False,
        )
        if r.returncode == 0:
            return sorted(p for p in r.stdout.decode().split("\0") if p and (repo / p).is_file())
    files = []
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo)
        if p.is_file() and not _NO_GIT_SKIP.intersection(rel.parts) and p.suffix != ".pyc":
            files.append(rel.as_posix())
    return files


def hidden_material(lab_dir: Path) -> list[str]:
    """What in a lab's public part is hidden from students (and so must move
    into grader/ before a release): non-visible variants in lab.yaml and
    non-visible visibility marks in checks/."""
    spec = find_lab(str(lab_dir))
    problems = []
    gvariants = lab_dir / GRADER_DIR / "variants.yaml"
    import yaml

    in_grader = set((yaml.safe_load(gvariants.read_text()) or {}) if gvariants.is_file() else {})
    for v in spec.variants:
        if v.visibility != "visible" and v.name not in in_grader:
            problems.append(
                f"{lab_dir / 'lab.yaml'}: variants.{v.name}: a {v.visibility} variant would "
                f"ship to students: move it to {lab_dir / GRADER_DIR / 'variants.yaml'}"
            )
    for f in sorted((lab_dir / "checks").rglob("*.py")):
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if _HIDDEN_MARK.search(line):
                problems.append(
                    f"{f}:{n}: a non-visible check would ship to students: "
                    f"move it to {lab_dir / GRADER_DIR / 'checks'}/ (hidden there by default)"
                )
    return problems


def build_student_release(repo: Path, out: Path, labs: list[str] | None = None) -> list[str]:
    """Write the student release of `repo` into `out` (which must not exist
    or be empty). Returns the ids of the labs it holds."""
    repo, out = Path(repo).resolve(), Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise NslabError(f"{out}: exists and is not empty; name a new folder")
    if out == repo or repo in out.parents:
        raise NslabError(f"{out}: inside the repository; write the release somewhere else")
    all_labs = {s.id: s for s in list_labs(repo / "labs")}
    wanted = list(labs) if labs else sorted(all_labs)
    unknown = [lab for lab in wanted if lab not in all_labs]
    if unknown:
        raise NslabError(
            f"no lab {', '.join(unknown)} in {repo / 'labs'} (labs: {', '.join(sorted(all_labs))})"
        )
    problems = [p for lab in wanted for p in hidden_material(all_labs[lab].path)]
    if problems:
        raise NslabError("not releasing hidden material:\n" + "\n".join(problems))
    out.mkdir(parents=True, exist_ok=True)
    copied = 0
    for rel in repo_files(repo):
        parts = rel.split("/")
        if parts[0] == ".git" or rel == MARKER:
            continue
        if parts[0] == "labs" and len(parts) > 2:
            if parts[1] not in wanted or (len(parts) > 3 and parts[2] in GRADER_ONLY):
                continue
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest, follow_symlinks=False)
        copied += 1
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    (out / MARKER).write_text(
        "nslab student release\n"
        f"built: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
        f" from {commit or 'a checkout without git'}\n"
        f"labs: {' '.join(wanted)}\n"
        "Reference solutions, hidden checks and hidden variants (labs/*/solution/,\n"
        "labs/*/grader/) are not included: they stay in the course's private repository.\n"
        "Tests that need them skip here, saying so.\n"
    )
    return wanted
