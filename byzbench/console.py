"""Terminal output and exit codes shared by the CLI commands (:mod:`byzbench.cli`,
:mod:`byzbench.report.command`): the rich consoles, :func:`fail` and the exit codes.

Exit codes: 0 success; 1 a cell failed (run) or a regression was found (check);
2 unusable input (a bad grid file, a missing results directory); 130 interrupted (Ctrl-C);
143 terminated (SIGTERM).
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (default: usage error)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                      soft_wrap=True)
    raise typer.Exit(code)


__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "console",
           "err_console", "fail"]
