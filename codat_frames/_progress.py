"""Progress of a long read: a tqdm bar (tqdm.auto: a widget in notebooks) and/or a callback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: ``fn(done, total, count)``: units done, units expected so far, records (rows) so far.
ProgressCallback = Callable[[int, int, int], None]


def default_progress() -> bool:
    """On in a notebook or an interactive terminal, off otherwise (CI, pipes, tests)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Units done out of a total that may grow, plus a running count of records.

    ``progress``: True/False, None (:func:`default_progress`), or a callable
    ``fn(done, total, count)`` called after every :meth:`advance`. The bar is made on the
    first :meth:`set_total`/:meth:`add_total`, labelled ``desc``, counting ``unit``s, with
    ``"{count:,} {noun}"`` as its postfix.
    """

    def __init__(
        self, progress: bool | ProgressCallback | None, desc: str, unit: str, noun: str
    ) -> None:
        self.callback = progress if callable(progress) else None
        self.show = default_progress() if progress is None else progress is True
        self.desc, self.unit, self.noun = desc, unit, noun
        self.bar: Any = None
        self.done = 0
        self.total = 0
        self.count = 0

    def set_total(self, total: int) -> None:
        """Units expected so far (it may grow: a repair pass, companies still being listed)."""
        self.total = total
        if not self.show:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, leave=True)
        else:
            self.bar.total = total
            self.bar.refresh()

    def add_total(self, n: int) -> None:
        self.set_total(self.total + n)

    def advance(self, n: int = 1, count: int = 0) -> None:
        """``n`` more units done, bringing ``count`` more records."""
        self.done += n
        self.count += count
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.count:,} {self.noun}", refresh=False)
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, self.total, self.count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
