"""`trtllm-pipeline verify`: every artifact of the store and each variant's current published
version (every version with all_versions) against its manifest; each problem with the command
that fixes it.

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
SLOT_DEPTH = 3  # <destination>/<model>/<precision>/<profile> (pipeline.stages.publish.variant_destination)


REBUILD = "`trtllm-pipeline run` sets the artifact aside, rebuilds it and publishes from it"
CLEAR_STAGED = "`trtllm-pipeline prune` (or the next publish) removes it"


class Finding(BaseModel):
    path: str  # the artifact or version folder
    problem: str  # `modified: engine/rank0.safetensors`, `missing: ...`, `not in the manifest: ...`
    fix: str  # the command that fixes it


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
            hint=first.fix,
        )


def audit(store: ArtifactStore, destination: Path, *, all_versions: bool = False) -> AuditReport:
    findings: list[Finding] = []
    trusted: dict[StatKey, str] = {}
    artifacts = _artifact_dirs(store.root)
    for path in artifacts:
        try:
            manifest = Manifest.model_validate_json((path / MANIFEST_NAME).read_text())
        except (OSError, ValidationError, ValueError):
            findings.append(
                Finding(path=str(path), problem=f"modified: {MANIFEST_NAME} (unreadable)", fix=REBUILD)
            )
            continue
        check = store.check(Artifact(path=path, manifest=manifest))
        trusted.update(check.trusted)
        findings += [Finding(path=str(path), problem=str(p), fix=REBUILD) for p in check.problems]
    published = 0
    for slot in _slots(destination):
        for leftover in sorted(slot.glob(f"{TMP_PREFIX}*")):
            findings.append(
                Finding(path=str(slot), problem=f"partial publish: {leftover.name}", fix=CLEAR_STAGED)
            )
        current = current_version(slot)
        if (slot / CURRENT).is_symlink() and current is None:
            problem = f"missing: the version {CURRENT} points to"
            findings.append(Finding(path=str(slot), problem=problem, fix=REBUILD))
        numbers = versions(slot)
        for number in numbers if all_versions else [current] if current is not None else []:
            version = slot / str(number)
            published += 1
            check = check_version(version, trusted)
            fix = _version_fix(numbers, number, current)
            findings += [Finding(path=str(version), problem=str(p), fix=fix) for p in check.problems]
    return AuditReport(artifacts=len(artifacts), published=published, findings=findings)


def _version_fix(numbers: list[int], number: int, current: int | None) -> str:
    """A published version never changes: a bad one is replaced by a fresh one, then pruned."""
    newer = sum(1 for n in numbers if n > number)
    if number == current or newer == 0:
        return "`trtllm-pipeline run` publishes a fresh version; `trtllm-pipeline prune --keep 1` then removes this one"
    return f"`trtllm-pipeline prune --keep {newer}` removes it (the {newer} newer version(s) stay)"


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


def verify(config: PipelineConfig, work_dir: Path, *, all_versions: bool = False) -> AuditReport:
    """`trtllm-pipeline verify`: the store in work_dir and the config's published versions."""
    check_work_dir(work_dir, writes=False)
    return audit(ArtifactStore(work_dir), config.publish.destination, all_versions=all_versions)
