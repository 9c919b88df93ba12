"""The entry point: runs a command and turns what it raised into one line and the exit code.

Exit codes are decided here, in one place (README, "Exit codes"): a typed error carries its
own; a signal, a refused write and a bug each map to theirs.
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from pipeline.cli.app import Invocation, app


def _print_error(exc: BaseException) -> None:
    from rich.console import Console
    from rich.markup import escape

    err = Console(stderr=True, highlight=False)
    message = getattr(exc, "message", str(exc))
    err.print(f"[bold red]ERROR[/] {escape(message)}", soft_wrap=True)
    hint = getattr(exc, "hint", None)
    if hint:
        err.print(f"[cyan]TIP[/] {escape(hint)}", soft_wrap=True)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread, once: the stack unwinds (temp folders
    removed, the lock released, the run report written) and `main` returns 128 + the signal. A second
    signal while that cleanup runs is ignored, so the cleanup finishes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from pipeline.core.errors import Interrupted

    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if not fired:
            fired = True
            raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def _config_deprecations_shown() -> Iterator[None]:
    """A config that says something the old way still loads (the library warns with a
    ConfigDeprecationWarning): each such warning is one WARNING line on stderr, every time.
    Other warnings are shown as Python shows them."""
    import warnings

    from rich.console import Console
    from rich.markup import escape

    from pipeline.core.errors import ConfigDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ConfigDeprecationWarning)
        python_shows = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if not issubclass(category, ConfigDeprecationWarning):
                python_shows(message, category, filename, lineno, file, line)
                return
            Console(stderr=True, highlight=False).print(
                f"[yellow]WARNING[/] {escape(str(message))}", soft_wrap=True
            )

        warnings.showwarning = show
        yield


def _machine_error(exc: OSError):
    """A write the machine refused (a full disk, a read-only or forbidden path) as a typed error; None
    for any other OSError, which stays a bug."""
    from pipeline.core.errors import DiskSpaceError, InputError

    full = DiskSpaceError.from_error(exc, where=Invocation.work_dir)
    if full is not None:
        return full
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and exc.filename:
        return InputError(f"cannot write here: {exc.strerror}", path=exc.filename, hint="use a writable path")
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the exit code (see README, "Exit codes")."""
    from pipeline.core.errors import ExitCode, Interrupted, PipelineError

    Invocation.debug = False
    Invocation.work_dir = None
    Invocation.argv = list(argv if argv is not None else sys.argv[1:])
    try:
        with _signals_interrupt(), _config_deprecations_shown():
            # Without standalone mode click returns a typer.Exit's code (bench --nsys: the child's), and
            # typer turns a KeyboardInterrupt it sees into the return value 130.
            code = app(args=Invocation.argv, prog_name="trtllm-pipeline", standalone_mode=False)
        return code if isinstance(code, int) else int(ExitCode.OK)
    except PipelineError as exc:
        if Invocation.debug:
            import traceback

            traceback.print_exc()
        _print_error(exc)
        return int(exc.exit_code)
    except Interrupted as exc:
        _print_error(exc)
        return int(exc.exit_code)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        show = getattr(exc, "show", None)
        show() if show else _print_error(exc)
        return int(ExitCode.BAD_INPUT)
    except (KeyboardInterrupt, typer.Abort):
        _print_error(RuntimeError("interrupted; the store keeps only complete artifacts"))
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug: say so in one line, traceback with --debug
        if Invocation.debug:
            raise
        typed = _machine_error(exc) if isinstance(exc, OSError) else None
        if typed is not None:
            _print_error(typed)
            return int(typed.exit_code)
        _print_error(
            RuntimeError(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
            )
        )
        return int(ExitCode.INTERNAL)
