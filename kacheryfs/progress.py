"""Progress bars for byte counts (tqdm: a terminal line, or a widget in Jupyter).

Shown on a terminal or in a notebook, quiet otherwise (pipes, logs, CI); ``progress=False``
silences them and ``progress=True`` forces them.
"""

from __future__ import annotations

import sys


def wanted(progress: bool | None) -> bool:
    if progress is not None:
        return bool(progress)
    try:
        on_terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):  # stderr replaced or closed
        on_terminal = False
    return on_terminal or "ipykernel" in sys.modules


class ByteProgress:
    """Called with (bytes done, total); ``delay`` seconds pass before a bar appears at all, so
    quick operations print nothing."""

    def __init__(self, label: str, progress: bool | None = None, delay: float = 0.0):
        self._bar = None
        if wanted(progress):
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                             delay=delay, leave=False, dynamic_ncols=True)

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "ByteProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
