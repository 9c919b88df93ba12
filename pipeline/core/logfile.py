"""A stage's log file that never takes the run down with it.

On a full disk every record a FileHandler cannot write prints a traceback
(logging's handleError), and flushing or closing it raises: the run's own
error drowns. This handler drops what it cannot write, silently; the step
that filled the disk fails with its own one-line error.
"""

from __future__ import annotations

import logging
from pathlib import Path


class StageLogHandler(logging.FileHandler):
    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="w")

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # the record is lost; there is nowhere to say so that would not fail the same way

    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass
