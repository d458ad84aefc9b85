"""setup.cfg lists every package: a non-editable install (a wheel) must hold every module the editable one runs."""

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    roots = {"rlhfkit": REPO / "rlhfkit", "rlhfkit_plugins": REPO / "plugins"}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if any(part.startswith(".") or part == "__pycache__" for part in init.relative_to(REPO).parts):
                continue
            found.add(".".join([name, *init.parent.relative_to(root).parts]))
    assert found <= listed, sorted(found - listed)
