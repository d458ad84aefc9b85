"""The one way rlhfkit writes a file that others may read while it is written: atomically.

A reader (a resumed run, the report, another cell's process) sees the old file or the new one, never half of
one: the text goes to a temporary sibling (named by the writer's pid, so two processes never share one) and
``os.replace`` renames it over the target, which POSIX makes atomic within one file system.  Directories
(artifacts, checkpoints, saved policies) are written to a staging sibling and put in place the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: Path, data) -> Path:
    """``data`` as indented JSON (values JSON cannot hold written with ``str``), atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=str))


def remove_directory(path: Path, aside: Path | None = None) -> bool:
    """Rename ``path`` aside (default ``<name>.removed-<pid>``) and delete it there, so a reader never sees a
    half-removed directory under the real name.  False when it was already gone (another process moved it)."""
    path = Path(path)
    aside = Path(aside) if aside is not None else path.with_name(f"{path.name}.removed-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True


def replace_directory(staging: Path, final: Path) -> Path:
    """Put the finished directory ``staging`` at ``final``.  A directory cannot be renamed over a non-empty one,
    so an existing ``final`` is removed first (:func:`remove_directory`): a reader sees the old directory, none,
    or the new one, never a half-written one."""
    staging, final = Path(staging), Path(final)
    if final.exists():
        remove_directory(final)
    os.replace(staging, final)
    return final


__all__ = ["atomic_write_text", "atomic_write_json", "remove_directory", "replace_directory"]
