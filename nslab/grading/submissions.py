"""What a TA downloads is not always a clean folder: platforms hand out zips,
and students zip their files inside a folder of their own. `prepare` turns a
submission as given (a folder or a .zip) into the folder to grade."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

from nslab.errors import NslabError

MAX_MEMBERS = 2000
_JUNK = {"__MACOSX", ".git", "__pycache__"}


class SubmissionError(NslabError):
    """The submission cannot be graded as given (a broken or hostile zip)."""


def unzip(archive: Path, dest: Path, max_mb: float) -> Path:
    """Unpack a zip safely: no absolute paths, no `..`, no links, bounded size."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SubmissionError(f"{archive}: not a readable zip file ({exc})") from None
    with zf:
        members = zf.infolist()
        if len(members) > MAX_MEMBERS:
            raise SubmissionError(f"{archive}: more than {MAX_MEMBERS} files; not graded")
        if sum(m.file_size for m in members) > max_mb * 1e6:
            raise SubmissionError(f"{archive}: unpacks to more than {max_mb:g} MB; not graded")
        for m in members:
            parts = Path(m.filename).parts
            if m.filename.startswith("/") or ".." in parts:
                raise SubmissionError(f"{archive}: member {m.filename!r} points outside the zip")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise SubmissionError(f"{archive}: member {m.filename!r} is a symbolic link")
        dest.mkdir(parents=True, exist_ok=True)
        zf.extractall(dest)
    return dest


def _holds(folder: Path, submit: list[str]) -> bool:
    return all((folder / f).is_file() for f in submit)


def find_root(folder: Path, submit: list[str], depth: int = 3) -> Path:
    """The folder that holds the lab's `submit:` files: `folder` itself, or
    the one nested folder that holds them all (e.g. `alice/lab0/`)."""
    if submit and _holds(folder, submit):
        return folder
    if not submit:
        entries = [p for p in folder.iterdir() if p.name not in _JUNK]
        dirs = [p for p in entries if p.is_dir()]
        return dirs[0] if len(entries) == 1 and len(dirs) == 1 else folder
    found, level = [], [folder]
    for _ in range(depth):
        level = [
            d
            for parent in level
            for d in sorted(parent.iterdir())
            if d.is_dir() and not d.is_symlink() and d.name not in _JUNK
        ]
        found = [d for d in level if _holds(d, submit)]
        if found:
            break
    return found[0] if len(found) == 1 else folder


def prepare(submission: Path, submit: list[str], scratch: Path, max_mb: float) -> Path:
    """The folder to grade for `submission` (a folder or a .zip)."""
    if submission.is_file() and submission.suffix.lower() == ".zip":
        submission = unzip(submission, scratch / "unzipped", max_mb)
    if not submission.is_dir():
        raise SubmissionError(f"{submission}: not a folder or a .zip file")
    return find_root(submission, submit)
