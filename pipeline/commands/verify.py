"""`trtllm-pipeline verify`: every artifact of the store and each variant's current published
version (every version with all_versions) against its manifest; each problem with the command
that fixes it.

A store artifact is checked by stat against its sealed manifest (a file hashed
again only where its stat changed). A published version is hashed file by file
against its publish-manifest.json: what a server reads is checked by its bytes,
never by a stat record. That publish-manifest.json must be the one the store's
publish artifact wrote (its sha256 is in that artifact's manifest), and name the
variant whose folder holds it; `current` must name a version of that variant.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline.commands.checks import check_work_dir
from pipeline.core.atomic import TMP_PREFIX
from pipeline.core.errors import IntegrityError, ModifiedManifestError
from pipeline.core.hashing import sha256_file
from pipeline.core.manifest import MANIFEST_NAME, Manifest
from pipeline.core.store import Artifact, ArtifactStore, read_manifest
from pipeline.facts import layout
from pipeline.facts.config import PipelineConfig
from pipeline.serving.release import check_current, check_variant, check_version, current_version, versions
from pipeline.serving.release_manifest import RELEASE_MANIFEST
from pipeline.stages.publish import Publish, PublishRecord

KEY = re.compile(r"[0-9a-f]{20}")
SLOT_DEPTH = (
    4  # <destination>/<model>/<backend>/<precision>/<profile> (pipeline.stages.publish.variant_destination)
)


REBUILD = "`trtllm-pipeline run` sets the artifact aside, rebuilds it and publishes from it"
REPUBLISH = "`trtllm-pipeline run` points current at a fresh version of this variant"
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
    released: dict[Path, set[str]] = {}  # each version's publish-manifest.json sha256, as the store recorded
    artifacts = _artifact_dirs(store.root)
    for path in artifacts:
        try:
            manifest = read_manifest(path)
        except ModifiedManifestError as exc:
            findings.append(
                Finding(path=str(path), problem=f"modified: {MANIFEST_NAME} ({exc.problem})", fix=REBUILD)
            )
            continue
        check = store.check(Artifact(path=path, manifest=manifest))
        findings += [Finding(path=str(path), problem=str(p), fix=REBUILD) for p in check.problems]
        release = _released_manifest(manifest)
        if release is not None:
            released.setdefault(release[0], set()).add(release[1])
    published = 0
    for slot in _slots(destination):
        variant = slot.relative_to(destination).parts  # (model, backend, precision, profile)
        for leftover in sorted(slot.glob(f"{TMP_PREFIX}*")):
            findings.append(
                Finding(path=str(slot), problem=f"partial publish: {leftover.name}", fix=CLEAR_STAGED)
            )
        wrong_current = check_current(slot, variant)
        if wrong_current is not None:
            findings.append(Finding(path=str(slot), problem=wrong_current, fix=REPUBLISH))
        current = current_version(slot)
        numbers = versions(slot)
        for number in numbers if all_versions else [current] if current is not None else []:
            version = slot / str(number)
            published += 1
            fix = _version_fix(numbers, number, current)
            problems = [str(p) for p in check_version(version).problems]
            problems += filter(None, [check_variant(version, variant), _unrecorded(version, released)])
            findings += [Finding(path=str(version), problem=p, fix=fix) for p in problems]
    return AuditReport(artifacts=len(artifacts), published=published, findings=findings)


def _released_manifest(manifest: Manifest) -> tuple[Path, str] | None:
    """(version folder, sha256 of the publish-manifest.json released there) for a publish artifact."""
    if manifest.stage != Publish.name:
        return None
    try:
        record = PublishRecord.model_validate(manifest.record)
    except ValidationError:
        return None  # the artifact's own check reports what is wrong with it
    written = f"{layout.REPOSITORY}/{RELEASE_MANIFEST}"
    sha256 = next((f.sha256 for f in manifest.files if f.path == written), None)
    return (Path(record.path).resolve(), sha256) if sha256 else None


def _unrecorded(version: Path, released: dict[Path, set[str]]) -> str | None:
    """A publish-manifest.json other than the one the store's publish artifact released there (a version
    the store has no record of, e.g. published from another work dir, is not judged)."""
    recorded = released.get(version.resolve())
    manifest = version / RELEASE_MANIFEST
    if not recorded or not manifest.is_file() or sha256_file(manifest) in recorded:
        return None
    return f"modified: {RELEASE_MANIFEST} (not the one publish wrote: its sha256 differs from the store's record)"


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
