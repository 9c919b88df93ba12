"""Will the engine run where it is published to run? Versions and GPU architecture, checked before publishing.

A TensorRT engine runs only under the TensorRT version that built it and on
the GPU architecture it was built for (users see `stdVersionRead ==
kSERIALIZATION_VERSION` or "expecting compute 8.6 got compute 8.0" at load
time, on the serving host). Publish refuses a mismatch instead.
"""

from __future__ import annotations

from pipeline.backends.base import EngineInfo
from pipeline.core.errors import InputError
from pipeline.facts.container import SERVING_CONTAINER, ServingContainer
from pipeline.facts.targets import Target

# The Triton TensorRT-LLM containers the pipeline knows the contents of.
CONTAINERS = {c.tag: c for c in (SERVING_CONTAINER,)}


def serving_container(tag: str) -> ServingContainer:
    if tag not in CONTAINERS:
        raise InputError(
            f"publish.container '{tag}' is not a container whose TensorRT-LLM and TensorRT versions are known",
            hint=f"use one of: {', '.join(CONTAINERS)}",
        )
    return CONTAINERS[tag]


def _release(version: str, parts: int) -> str:
    """The first `parts` numeric components ('10.14.1.48' -> '10.14.1' for 3)."""
    return ".".join(version.split("+")[0].split(".")[:parts])


def check_engine_fits(
    engine_path: str,
    info: EngineInfo,
    engine_version: str | None,
    *,
    target: Target,
    container: ServingContainer | None,
) -> None:
    """Raise InputError (one line naming what differs) unless the engine can run on target in container.

    info is what the build recorded (build_info.json); engine_version is the `version` of the
    engine's config.json (TensorRT-LLM's own stamp). container is None where the backend serves the
    repository without one (the reference runtime).
    """
    if info.target != target.name:
        raise InputError(
            f"built for target '{info.target}', but the config's target is '{target.name}'",
            path=engine_path,
            hint="rebuild for this target (trtllm-pipeline build)",
        )
    if info.sm != target.sm:
        raise InputError(
            f"built for sm{info.sm}, but target '{target.name}' is sm{target.sm}",
            path=engine_path,
            hint="an engine runs only on the GPU architecture that built it: rebuild on the target GPU",
        )
    if container is None:
        return
    found = {
        "tensorrt_llm": engine_version or info.tensorrt_llm_version,
        "tensorrt": info.tensorrt_version,
    }
    wanted = {"tensorrt_llm": container.tensorrt_llm, "tensorrt": container.tensorrt}
    for name, want in wanted.items():
        have = found[name]
        if have is None:
            raise InputError(
                f"records no {name} version; cannot prove it loads in {container.tag}",
                path=engine_path,
                hint="rebuild with this pipeline's build stage, which records the versions",
            )
        if _release(have, 3) != _release(want, 3):
            raise InputError(
                f"built with {name} {have}, but {container.tag} serves {name} {want}",
                path=engine_path,
                hint="build inside the serving container, or set publish.container to the one that built it",
            )
