"""ModelOpt prints progress to stdout and raises UserWarnings; the library never prints, so
both go to the stage log instead."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def output_to_log(log: logging.Logger) -> Iterator[None]:
    captured = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured):
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for line in captured.getvalue().splitlines():
                if line.strip():
                    log.info("modelopt: %s", line.rstrip())
            for w in caught:
                log.info("warning: %s: %s", w.category.__name__, str(w.message).strip())
