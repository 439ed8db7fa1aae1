"""Reading a YAML file with one-line errors that name the file (grid files, reference files).

    raw = load_yaml("configs/grid.yaml", ConfigError)
    # ConfigError: configs/grid.yaml: invalid YAML at line 3, column 7: found ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# A grid or reference file is a few hundred nodes; aliases may repeat a node, but the
# document they expand to is bounded (a "billion laughs" of nested anchors is rejected
# before anything is built from it).
MAX_NODES = 100_000


class _TooLarge(Exception):
    pass


def expanded_size(node: yaml.Node, limit: int = MAX_NODES) -> int:
    """Nodes of the composed document with every alias expanded, counted without expanding
    (memoised per node); raises :class:`_TooLarge` past ``limit`` or on a recursive alias."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _TooLarge("the YAML refers to itself (a recursive alias)")
        active.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        active.discard(key)
        if total > limit:
            raise _TooLarge(f"the YAML expands to more than {limit:,} nodes (nested aliases?); "
                            f"a file may expand to at most {limit:,}")
        sizes[key] = total
        return total

    return size(node)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents whose aliases expand past MAX_NODES."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            expanded_size(node)
        return node


def load_yaml(path: str | Path, error_cls: type[Exception] = ValueError, what: str = "") -> Any:
    """Parse the YAML file ``path``; a missing or unreadable file or a syntax error raises
    ``error_cls`` with one line: ``"<what> <path>: no such file"``, ``"…: cannot read: …"``
    or ``"…: invalid YAML at line L, column C: <problem>"`` (``what``, e.g.
    ``"reference file"``, is optional). A document whose aliases expand to more than
    :data:`MAX_NODES` nodes (an alias bomb), or that refers to itself, raises too."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error_cls(f"{name}: no such file") from None
    except OSError as exc:
        raise error_cls(f"{name}: cannot read: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader
    except _TooLarge as exc:
        raise error_cls(f"{name}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error_cls(f"{name}: invalid YAML{where}: {problem}") from None


__all__ = ["load_yaml"]
