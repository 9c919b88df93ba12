"""`trtllm-pipeline prune`: remove the older published versions of each variant, as `dvc gc` or
`hf cache delete` do for theirs: the newest `keep` stay, and the version `current` points to
always stays. Holds the destination's lock, as publish does."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.commands.checks import selected_variants
from pipeline.core.atomic import remove_staged
from pipeline.core.locks import hold_lock
from pipeline.core.reporter import Reporter
from pipeline.facts.config import PipelineConfig
from pipeline.serving.release import current_version, remove_version, stale_versions, versions
from pipeline.stages.publish import variant_destination


@dataclass
class SlotPrune:
    slot: Path
    current: int | None
    removed: list[int] = field(default_factory=list)  # with dry_run: would be removed
    kept: list[int] = field(default_factory=list)
    freed_bytes: int = 0  # files no other link holds (a version's files are mostly the store's links)

    def to_json(self) -> dict:
        return {
            "slot": str(self.slot),
            "current": self.current,
            "removed": self.removed,
            "kept": self.kept,
            "freed_bytes": self.freed_bytes,
        }


def prune(
    config: PipelineConfig,
    *,
    keep: int,
    dry_run: bool = False,
    reporter: Reporter,
    precisions: frozenset[str] = frozenset(),
    profiles: frozenset[str] = frozenset(),
    backends: frozenset[str] = frozenset(),
) -> list[SlotPrune]:
    """Each published variant of the config that the filters select, older versions removed."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, not {keep}")
    slots = [
        variant_destination(config, *variant)
        for variant in selected_variants(config, precisions, profiles, backends)
    ]
    destination = config.publish.destination
    if not destination.is_dir():
        return []
    results = []
    with hold_lock(
        destination, wait=True, on_wait=lambda p: reporter.info(f"waiting for a publish holding {p}")
    ):
        for slot in slots:
            if not versions(slot):
                continue
            stale = stale_versions(slot, keep)
            result = SlotPrune(slot, current_version(slot), removed=stale)
            result.kept = [v for v in versions(slot) if v not in stale]
            result.freed_bytes = sum(_unshared_bytes(slot / str(v)) for v in stale)
            if not dry_run:
                for action in remove_staged(slot):
                    reporter.warn(action)
                for version in stale:
                    remove_version(slot, version)
            results.append(result)
    return results


def _unshared_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            total += st.st_size if st.st_nlink == 1 else 0
    return total
