"""Progress on stderr: one line, redrawn in place, at most every :data:`REDRAW_SECONDS`.

The command line's ``done/total images`` and the hub download's ``12.3/114.0 MB`` are both a
:class:`StatusLine`.
"""

from __future__ import annotations

import sys
import time

REDRAW_SECONDS = 0.2  # often enough to look live; seldom enough that drawing costs nothing


class StatusLine:
    """A line that :meth:`draw` rewrites in place (``\\r``); nothing when not ``enabled``."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream  # None: whatever sys.stderr is at each draw
        self.drawn = None  # time.monotonic() of the last draw; None before the first

    def draw(self, text: str, *, final: bool = False) -> None:
        """Show ``text``, unless the last draw was under :data:`REDRAW_SECONDS` ago; a ``final``
        draw always shows and ends the line."""
        now = time.monotonic()
        if not self.enabled or (not final and self.drawn is not None
                                and now - self.drawn < REDRAW_SECONDS):
            return
        stream = self.stream or sys.stderr
        stream.write(f"\r{text}\n" if final else f"\r{text}")
        stream.flush()
        self.drawn = now
