"""How a long command shows its progress on stderr: one line rewritten in place on a terminal; in a log
(stderr not a terminal), a line at each tenth of the way instead of one endless line of carriage returns."""
from __future__ import annotations

import sys
from typing import Callable


class StderrProgress:
    """A (done, total) progress callback that writes ``words(done, total)``; ``total`` may be None (unknown)."""

    def __init__(self, words: Callable[[int, int | None], str]):
        self.words, self.tty, self.shown = words, sys.stderr.isatty(), None

    def __call__(self, done: int, total: int | None) -> None:
        if self.tty:
            print(f"\r{self.words(done, total)}", end="", file=sys.stderr, flush=True)
            return
        mark = (10 * done // total, done == total) if total else done // 100  # unknown total: every 100
        if mark != self.shown:
            self.shown = mark
            print(self.words(done, total), file=sys.stderr, flush=True)

    def close(self) -> None:
        """Ends the rewritten line on a terminal; a log's lines are whole already."""
        if self.tty:
            print(file=sys.stderr)
