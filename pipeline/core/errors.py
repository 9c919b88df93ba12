"""Every error the pipeline raises on purpose, and the exit code it maps to.

The CLI turns a PipelineError into one red line (plus a tip) and its exit code;
anything else is a bug and is reported as such. Errors carry data, not prose
assembled at the raise site, so tests can assert on fields.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from enum import IntEnum
from pathlib import Path

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class ExitCode(IntEnum):
    OK = 0
    GATE_FAILED = 1
    BAD_INPUT = 2
    MISSING_DEPENDENCY = 3
    BUSY = 4
    STAGE_FAILED = 5
    INTERNAL = 70
    INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a job ended by Ctrl-C
    TERMINATED = 143  # 128 + SIGTERM


class PipelineError(Exception):
    exit_code: ExitCode = ExitCode.STAGE_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(PipelineError, ValueError):
    """A config file (or the embedded default) is invalid: names the file and the field."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, source: str | Path, field: str, problem: str, *, hint: str | None = None) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        where = f"{self.source}: {field}" if field else self.source
        super().__init__(f"{where}: {problem}", hint=hint)


class ConfigDeprecationWarning(FutureWarning):
    """A config says something the old way: it still loads, and the CLI shows this as one WARNING line.
    (A FutureWarning, not a DeprecationWarning: it is meant for the user, whom Python shows it to.)"""


class InputError(PipelineError, ValueError):
    """Bad input data (a file, a path, a data set) that is not the config itself."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message, hint=hint)


class MissingDependencyError(PipelineError, ImportError):
    """A package, tool or piece of hardware the requested work needs is absent."""

    exit_code = ExitCode.MISSING_DEPENDENCY


class DiskSpaceError(PipelineError):
    """Too little disk: found before a download, or the disk filled while a step wrote (ENOSPC, EDQUOT).

    Names the path, the space free there, and what the step needed or had written when it ran out."""

    exit_code = ExitCode.STAGE_FAILED

    def __init__(
        self,
        path: str | Path,
        *,
        free: int,
        needed: int | None = None,
        written: int | None = None,
        hint: str = "free some space, or point --work-dir at a larger disk",
    ) -> None:
        self.path = Path(path)
        self.free = free
        self.needed = needed
        self.written = written
        if needed is not None:
            what = f"the step needs {_size(needed)} but only {_size(free)} is free there"
        elif written is not None:
            what = f"no space left: the step needed more than the {_size(written)} it wrote there"
            what += f", and {_size(free)} is free"
        else:
            what = f"no space left on the device ({_size(free)} free there)"
        super().__init__(f"{path}: {what}", hint=hint)

    @classmethod
    def from_error(
        cls, exc: BaseException, *, where: Path | None = None, written: int | None = None
    ) -> DiskSpaceError | None:
        """The error for a write that failed because the disk is full; None for anything else.

        Writers in native code (safetensors) raise their own types, naming the OS error in the message.
        `where`: the folder being written, for a failed write() that names no file."""
        full = getattr(exc, "errno", None) in DISK_FULL or any(os.strerror(e) in str(exc) for e in DISK_FULL)
        if not full:
            return None
        filename = getattr(exc, "filename", None)
        path = Path(filename) if filename else (where or Path.cwd())
        existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
        return cls(path, free=shutil.disk_usage(existing).free, written=written)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. A BaseException, as KeyboardInterrupt is, so no `except Exception` in a
    stage swallows it; the CLI raises it from its signal handler and maps it to 128 + the signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.TERMINATED
        self.message = f"interrupted by {signal.Signals(signum).name}"
        self.hint = "the store keeps only complete artifacts: rerun to continue where it stopped"
        super().__init__(self.message)


class GateFailedError(PipelineError):
    exit_code = ExitCode.GATE_FAILED


class LockBusyError(PipelineError):
    exit_code = ExitCode.BUSY

    def __init__(self, lock_path: Path) -> None:
        self.lock_path = lock_path
        super().__init__(
            f"another pipeline run holds {lock_path}",
            hint="wait for it to finish, or run without --no-wait to queue behind it",
        )


class StageError(PipelineError):
    """A stage could not produce its artifact (download failed, external tool failed, ...)."""

    exit_code = ExitCode.STAGE_FAILED

    def __init__(self, stage: str, message: str, *, hint: str | None = None, log: Path | None = None) -> None:
        self.stage = stage
        self.log = log
        super().__init__(f"{stage}: {message}" + (f" (log: {log})" if log else ""), hint=hint)


class ToolFailedError(StageError):
    """An external command exited non-zero."""

    def __init__(self, stage: str, argv: list[str], returncode: int, log: Path | None) -> None:
        self.argv = argv
        self.returncode = returncode
        super().__init__(stage, f"{argv[0]} exited with code {returncode}", log=log)


class FetchError(StageError):
    """The model could not be fetched; the message says what to do. `file` names the file at fault, if one."""

    def __init__(self, message: str, *, file: str | None = None, hint: str | None = None) -> None:
        self.file = file
        super().__init__("fetch", message, hint=hint)


class HubAccessError(FetchError):
    """The hub refused the repo or revision (gated, 401, 403, 404): the config or the credentials must change."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, repo_id: str, status: int | None, message: str, *, file: str | None = None) -> None:
        self.repo_id = repo_id
        self.status = status
        super().__init__(message, file=file)


class HubListingError(FetchError):
    """What the hub answered is not a listing fetch can trust (a bad file name, not JSON, no commit)."""


class PickleRefusedError(FetchError):
    """The selected files include pickled weights and the config does not opt in."""

    exit_code = ExitCode.BAD_INPUT


class ChecksumError(FetchError):
    """A file's size or digest differs from what the hub's metadata promised; the file was deleted."""

    def __init__(self, file: str, what: str, expected: str, actual: str) -> None:
        self.what = what
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{file}: {what} {actual} does not match the hub's {expected}; the file was deleted, "
            "rerun to download it again",
            file=file,
        )


class IntegrityError(PipelineError):
    """Files differ from the manifest that lists them: modified, missing, or not listed."""

    exit_code = ExitCode.BAD_INPUT


class ModifiedManifestError(IntegrityError):
    """An artifact's manifest.json is unreadable or no longer matches its seal (edited since it was
    written): the artifact counts as modified, as one whose files differ does."""

    def __init__(self, manifest: Path, problem: str) -> None:
        self.artifact = manifest.parent
        self.problem = problem
        super().__init__(
            f"{manifest}: {problem}",
            hint="`trtllm-pipeline run` sets the artifact aside and rebuilds it",
        )


class RemoteTaskError(PipelineError):
    """A task's error on a Ray worker, as the driver gets it: the same line, hint and exit code (the
    original class does not cross processes: its constructor takes other arguments than it pickles)."""

    def __init__(
        self, message: str, *, hint: str | None = None, exit_code: int = ExitCode.STAGE_FAILED
    ) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = ExitCode(exit_code)

    @classmethod
    def of(cls, exc: PipelineError | Interrupted) -> RemoteTaskError:
        return cls(exc.message, hint=exc.hint, exit_code=exc.exit_code)
