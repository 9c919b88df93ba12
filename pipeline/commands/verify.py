"""`trtllm-pipeline verify`: every artifact of the store and every published version against its manifest.

The store is checked first; its verified files (by stat) then vouch for their
hard links in the published versions, so an unchanged tree costs one stat per
file and only copies are hashed.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.commands.checks import check_work_dir
from pipeline.core.atomic import TMP_PREFIX
from pipeline.core.errors import IntegrityError
from pipeline.core.manifest import MANIFEST_NAME, Manifest, StatKey
from pipeline.core.store import Artifact, ArtifactStore
from pipeline.facts.config import PipelineConfig
from pipeline.serving.release import CURRENT, check_version, current_version, versions

KEY = re.compile(r"[0-9a-f]{20}")
SLOT_DEPTH = (
    4  # <destination>/<model>/<backend>/<precision>/<profile> (pipeline.stages.publish.variant_destination)
)


class Finding(BaseModel):
    path: str  # the artifact or version folder
    problem: str  # `modified: engine/rank0.safetensors`, `missing: ...`, `not in the manifest: ...`


class AuditReport(BaseModel):
    artifacts: int  # checked
    published: int  # versions checked
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def error(self) -> IntegrityError | None:
        if self.ok:
            return None
        first = self.findings[0]
        return IntegrityError(
            f"verify found {len(self.findings)} problem(s); first: {first.path}: {first.problem}",
            hint="`trtllm-pipeline run` sets a modified artifact aside, rebuilds it and publishes a fresh version",
        )


def audit(store: ArtifactStore, destination: Path) -> AuditReport:
    findings: list[Finding] = []
    trusted: dict[StatKey, str] = {}
    artifacts = _artifact_dirs(store.root)
    for path in artifacts:
        try:
            manifest = Manifest.model_validate_json((path / MANIFEST_NAME).read_text())
        except (OSError, ValidationError, ValueError):
            findings.append(Finding(path=str(path), problem=f"modified: {MANIFEST_NAME} (unreadable)"))
            continue
        check = store.check(Artifact(path=path, manifest=manifest))
        trusted.update(check.trusted)
        findings += [Finding(path=str(path), problem=str(p)) for p in check.problems]
    published = 0
    for slot in _slots(destination):
        for leftover in sorted(slot.glob(f"{TMP_PREFIX}*")):
            findings.append(Finding(path=str(slot), problem=f"partial publish: {leftover.name}"))
        if (slot / CURRENT).is_symlink() and current_version(slot) is None:
            findings.append(Finding(path=str(slot), problem=f"missing: the version {CURRENT} points to"))
        for number in versions(slot):
            version = slot / str(number)
            published += 1
            check = check_version(version, trusted)
            findings += [Finding(path=str(version), problem=str(p)) for p in check.problems]
    return AuditReport(artifacts=len(artifacts), published=published, findings=findings)


def _artifact_dirs(root: Path) -> list[Path]:
    """Committed artifacts: <stage>/<variant...>/<key>/ holding a manifest (not aside, not staged)."""
    if not root.is_dir():
        return []
    found = []
    for manifest in sorted(root.rglob(MANIFEST_NAME)):
        folder = manifest.parent
        parts = folder.relative_to(root).parts
        if KEY.fullmatch(folder.name) and not any(p.startswith(".") or ".modified-" in p for p in parts):
            found.append(folder)
    return found


def _slots(destination: Path) -> list[Path]:
    if not destination.is_dir():
        return []
    pattern = "/".join(["*"] * SLOT_DEPTH)
    return sorted(p for p in destination.glob(pattern) if p.is_dir() and not p.name.startswith("."))


def verify(config: PipelineConfig, work_dir: Path) -> AuditReport:
    """`trtllm-pipeline verify`: the store in work_dir and the config's published versions."""
    check_work_dir(work_dir, writes=False)
    return audit(ArtifactStore(work_dir), config.publish.destination)
