"""The one way rlhfkit writes a file that others may read while it is written: atomically.

A reader (a resumed run, the report, another cell's process) sees the old file or the new one, never half of
one: the text goes to a temporary sibling (named by the writer's pid, so two processes never share one) and
``os.replace`` renames it over the target, which POSIX makes atomic within one file system.
"""

from __future__ import annotations

import json
import os
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


__all__ = ["atomic_write_text", "atomic_write_json"]
