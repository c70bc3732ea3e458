"""Where the files squeezeedge reads at run time are: the board descriptions, the calibration corpus, the
shipped tuning databases.

Installed from a wheel they are package data under ``squeezeedge/data/`` (pyproject.toml maps the top-level
``targets/``, ``calibration/`` and ``results/databases/`` there), found through importlib.resources; in a
clone (or an editable install) they are read where they are. Files that live inside ``compiler/`` (the
runner sources, the bench schema) are found next to the modules either way.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
IN_CLONE = {"targets": REPO / "targets", "calibration": REPO / "calibration", "databases": REPO / "results" / "databases"}
TARGETS_ENV = "SQUEEZEEDGE_TARGETS_DIR"  # a user's own board descriptions, on top of the shipped ones


def data_dir(name: str) -> Path:
    """The directory of one kind of shipped data: ``targets``, ``calibration`` or ``databases``."""
    installed = resources.files("squeezeedge") / "data" / name
    if installed.is_dir():
        return Path(str(installed))  # a wheel installs as plain files: its Traversable is a path
    return IN_CLONE[name]


def user_targets_dir() -> Path | None:
    """The user's own targets directory ($SQUEEZEEDGE_TARGETS_DIR or --targets-dir), or None."""
    value = os.environ.get(TARGETS_ENV)
    return Path(value).expanduser() if value else None


def shipped_database(target: str, precision: str) -> Path | None:
    """The tuning database shipped for ``target`` and ``precision`` (fp32/int8), or None."""
    path = data_dir("databases") / f"{target}-{precision}"
    return path if (path / "manifest.json").is_file() else None
