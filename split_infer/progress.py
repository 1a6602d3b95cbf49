"""Progress bars for the long commands (weights pull, export, detect on a video), on stderr only.

Shown when stderr is a terminal, or when the command's --progress asks for them; never on stdout,
which carries results (paths, JSON lines), and removed when done, so logs keep one record per line.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


def wanted(forced: bool = False) -> bool:
    """A bar is drawn when asked for (--progress) or when a person watches stderr."""
    return forced or sys.stderr.isatty()


@dataclass
class Bar:
    """One task's bar; a no-op when progress is off, so callers never branch on it."""

    progress: Progress | None = None
    task: TaskID | None = field(default=None)

    def advance(self, steps: float = 1.0) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, steps)

    def stage(self, description: str, total: float | None = None) -> None:
        """Name what happens now (and how many steps it has, when known), restarting the count."""
        if self.progress is not None and self.task is not None:
            self.progress.reset(self.task, total=total, description=description)


@contextmanager
def bar(description: str, total: float | None = None, *, forced: bool = False) -> Iterator[Bar]:
    """A transient bar on stderr for the duration of the block (spinner only while `total` is unknown)."""
    if not wanted(forced):
        yield Bar()
        return
    console = Console(stderr=True, force_terminal=True if forced else None)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    # stdout and stderr stay untouched: results written meanwhile go where they always go.
    with Progress(*columns, console=console, transient=True, redirect_stdout=False, redirect_stderr=False) as progress:
        yield Bar(progress, progress.add_task(description, total=total))
