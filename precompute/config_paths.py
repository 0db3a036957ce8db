"""File paths in a config: relative ones are resolved against the config file's folder, and files
whose contents decide a run (checkpoints, model and datasets code) are hashed."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's contents, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: file paths of a config, resolved against the config file's folder when relative (``"file.py:func"``
#: specs: the file part); paths given as flags stay relative to the current folder
CONFIG_PATHS = {"data": ("path", "labels_override", "exclude", "noise_matrix", "factory"), "model": ("factory", "checkpoint")}


def resolve_relative_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the relative file paths of a raw config dict (from TOML) absolute, against ``base``."""

    def fix(value: Any, spec: bool) -> Any:
        if not isinstance(value, str) or not value:
            return value
        file, sep, func = value.rpartition(":") if spec and ":" in value else (value, "", "")
        return f"{base / file}{sep}{func}" if not Path(file).is_absolute() and not file.startswith("~") else value

    for section, keys in CONFIG_PATHS.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            continue
        for key in keys:
            if key in table:
                v, spec = table[key], key == "factory"
                table[key] = [fix(x, spec) for x in v] if isinstance(v, list) and key == "checkpoint" else fix(v, spec)
