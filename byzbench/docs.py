"""Component tables of the documentation, generated from the registry.

Each table lists a kind's built-in components (datasets, partitions, models, attacks,
defenses; plugins are left out): name, the first
paragraph of the class docstring, every parameter with its default and its pydantic field
description, the paper (``cls.paper``), and per kind the attack's stage or the defense's
privacy facts. Parameters every component of a kind shares are listed once above the table.

A documentation file holds a table between two marker comments, which the generator owns::

    <!-- BEGIN GENERATED: defenses -->
    ...
    <!-- END GENERATED: defenses -->

``python -m byzbench.docs`` (``make docs``) rewrites those blocks in :data:`DOC_FILES`;
``python -m byzbench.docs --check`` exits 1 and names the files whose blocks are stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from byzbench.registry import REGISTRIES, Component

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ("README.md", "docs/attacks.md")
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<kind>[a-z_]+)s -->\n)(?P<body>.*?)"
                   r"(<!-- END GENERATED: (?P=kind)s -->)", re.DOTALL)
PRIVACY = (("needs_plaintext_updates", "plaintext"), ("needs_server_data", "server data"),
           ("keeps_client_state", "state"))


def _inline(text: str) -> str:
    """reStructuredText inline markup → markdown, on one line."""
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([\w]+)`", r"`\1`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "–"


def summary(cls: type) -> str:
    """The class docstring on one line: its prose paragraphs, up to the first indented
    (code) block."""
    paragraphs = []
    for paragraph in (inspect.getdoc(cls) or "").split("\n\n"):
        if paragraph[:1].isspace() or paragraph.rstrip().endswith("::"):
            break
        paragraphs.append(paragraph)
    return _inline(" ".join(paragraphs))


def _choices(info: FieldInfo) -> list[Any]:
    """The allowed values of a ``Literal[...]`` field (also inside ``Optional``)."""
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [v for arg in get_args(annotation) if get_origin(arg) is Literal
            for v in get_args(arg)]


def _yaml(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return f"`{value}`"
    return f"`{json.dumps(value, default=str)}`"


def default_text(info: FieldInfo) -> str:
    """A field's default as the YAML a user would write (``required`` if it has none),
    followed by the other allowed values of a ``Literal`` field."""
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        value = PydanticUndefined
    else:
        value = info.default
    text = "required" if value is PydanticUndefined else _yaml(value)
    others = [_yaml(v) for v in _choices(info) if v != value]
    return f"{text}; also {', '.join(others)}" if others else text


def param_text(name: str, info: FieldInfo) -> str:
    """`` `name` (default) — description``."""
    text = f"`{name}` ({default_text(info)})"
    if info.description:
        text += f" — {_inline(info.description)}"
    return text


def _builtins(kind: str) -> list[tuple[str, type[Component]]]:
    """The kind's components that byzbench itself defines (not plugins of this machine)."""
    registry = REGISTRIES[kind]
    return [(name, cls) for name, cls in registry.items()
            if name not in registry.plugins and cls.__module__.split(".")[0] == "byzbench"]


def _common_fields(classes: Sequence[type[Component]]) -> list[str]:
    """Fields every class declares with the same default and description (≥ 2 classes)."""
    if len(classes) < 2:
        return []
    first = classes[0].Params.model_fields

    def same(name: str) -> bool:
        texts = {param_text(name, c.Params.model_fields[name]) if name in c.Params.model_fields
                 else None for c in classes}
        return len(texts) == 1 and None not in texts

    return [name for name in first if same(name)]


def component_table(kind: str) -> str:
    """The markdown table (with its shared-parameters line) of one kind's components."""
    if kind not in REGISTRIES:
        raise ValueError(f"unknown kind '{kind}' (allowed: {', '.join(REGISTRIES)})")
    entries = _builtins(kind)
    common = _common_fields([cls for _, cls in entries])
    lines = []
    if common:
        fields = entries[0][1].Params.model_fields
        lines += [f"Every {kind} also takes "
                  + "; ".join(param_text(f, fields[f]) for f in common) + ".", ""]
    header = ["name", *(["stage"] if kind == "attack" else []), "what it does",
              "parameters (default)", "paper",
              *([label for _, label in PRIVACY] if kind == "defense" else [])]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, cls in entries:
        params = [param_text(f, info) for f, info in cls.Params.model_fields.items()
                  if f not in common]
        text = summary(cls)
        row = [f"`{name}`"]
        if kind == "attack":
            row.append(str(getattr(cls, "stage", "") or ""))
        privacy = getattr(cls, "privacy", None) if kind == "defense" else None
        if privacy is not None and getattr(privacy, "note", ""):
            text += f" *Privacy:* {_inline(privacy.note)}."
        row += [text, "<br>".join(params), _inline(str(getattr(cls, "paper", "") or ""))]
        if kind == "defense":
            row += [_fact(getattr(privacy, key, None)) for key, _ in PRIVACY]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def _fact(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else "unknown"


def render(text: str) -> str:
    """``text`` with every generated block replaced by the current table of its kind."""
    return BLOCK.sub(lambda m: m.group(1) + component_table(m.group("kind")) + m.group(4),
                     text)


def stale_files(root: Path = ROOT, files: Sequence[str] = DOC_FILES) -> list[Path]:
    """The files under ``root`` whose generated blocks differ from :func:`render`."""
    paths = [root / f for f in files]
    return [p for p in paths if render(p.read_text()) != p.read_text()]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m byzbench.docs [--check] [FILE…]``: regenerate (or check) the tables."""
    parser = argparse.ArgumentParser(prog="python -m byzbench.docs", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("files", nargs="*", help=f"default: {', '.join(DOC_FILES)} "
                                                 "of the repository")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file is out of date")
    args = parser.parse_args(argv)
    paths = [Path(f) for f in args.files] or [ROOT / f for f in DOC_FILES]
    stale = [p for p in paths if render(p.read_text()) != p.read_text()]
    if args.check:
        for path in stale:
            print(f"{path}: generated component tables are out of date; run `make docs`",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(render(path.read_text()))
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
