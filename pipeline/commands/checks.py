"""Checks of a request that every verb makes the same way, before it does anything."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.core.paths import dir_problem
from pipeline.facts.config import PipelineConfig


def check_filters(
    config: PipelineConfig,
    precisions: frozenset[str],
    profiles: frozenset[str],
    backends: frozenset[str] = frozenset(),
) -> None:
    """--precision, --profile and --backend name what the config has."""
    known_backends = {b.name for b in config.backends}
    for b in sorted(backends):
        if b not in known_backends:
            raise InputError(
                f"--backend {b}: not in the config's backends ({', '.join(sorted(known_backends))})"
            )
    known_precisions = {p.value for b, p in config.variants if not backends or b in backends}
    for p in sorted(precisions):
        if p not in known_precisions:
            raise InputError(
                f"--precision {p}: not in the config's precisions ({', '.join(sorted(known_precisions))})"
            )
    known_profiles = {p.name for p in config.profiles}
    for p in sorted(profiles):
        if p not in known_profiles:
            raise InputError(
                f"--profile {p}: not in the config's profiles ({', '.join(sorted(known_profiles))})"
            )


def selected_variants(
    config: PipelineConfig,
    precisions: frozenset[str],
    profiles: frozenset[str],
    backends: frozenset[str] = frozenset(),
) -> list[tuple[str, str, str]]:
    """(backend, precision, profile) of every published variant of the config the filters select, in the
    config's order, once the filters are found to name what the config has."""
    check_filters(config, precisions, profiles, backends)
    return config.published_variants(backends, precisions, profiles)


def check_work_dir(work_dir: Path, *, writes: bool = True) -> None:
    """--work-dir is a folder (or can be made one); `writes`: and this command can write into it."""
    problem = dir_problem(work_dir, writable=writes)
    if problem is not None:
        hint = "point --work-dir at a writable folder" if writes else "point --work-dir at the run's folder"
        raise InputError(f"--work-dir {work_dir}: {problem}", hint=hint)
