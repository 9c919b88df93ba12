"""Put a file where it belongs without trusting the copy: hardlink, else copy and re-verify."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Literal

from pipeline.errors import InputError
from pipeline.hashing import sha256_file

Placement = Literal["hardlink", "copy"]


def place_file(src: Path, dst: Path, sha256: str) -> Placement:
    """Hardlink src at dst when both are on one filesystem; otherwise copy it and check its sha256.

    A hardlink shares the verified bytes, so only a copy needs hashing again.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    shutil.copyfile(src, dst)
    actual = sha256_file(dst)
    if actual != sha256:
        dst.unlink()
        raise InputError(
            f"copy has sha256 {actual[:12]}..., expected {sha256[:12]}... (source changed or disk error)",
            path=src,
            hint="rerun the stage that produced the file (--force)",
        )
    return "copy"
