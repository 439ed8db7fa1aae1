"""Reading a YAML file with one-line errors that name the file (grid files, reference files).

    raw = load_yaml("configs/grid.yaml", ConfigError)
    # ConfigError: configs/grid.yaml: invalid YAML at line 3, column 7: found ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_yaml(path: str | Path, error_cls: type[Exception] = ValueError, what: str = "") -> Any:
    """Parse the YAML file ``path``; a missing or unreadable file or a syntax error raises
    ``error_cls`` with one line: ``"<what> <path>: no such file"``, ``"…: cannot read: …"``
    or ``"…: invalid YAML at line L, column C: <problem>"`` (``what``, e.g.
    ``"reference file"``, is optional)."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error_cls(f"{name}: no such file") from None
    except OSError as exc:
        raise error_cls(f"{name}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error_cls(f"{name}: invalid YAML{where}: {problem}") from None


__all__ = ["load_yaml"]
