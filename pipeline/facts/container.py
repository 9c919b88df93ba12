"""The serving container: its name and what it carries. The one home of these facts.

Engines are built inside this image and served by it: a TensorRT engine runs
only under the TensorRT (and TensorRT-LLM) version that built it. The versions
are the image's row of triton-inference-server/server
docs/introduction/compatibility.md (commit 0f963c9a8c6913aa4cd9b57ee04f9c2b76ee8d2a):
26.04 is the first release with TensorRT-LLM 1.2.1 (26.03 has 1.2.0; 26.02 and
earlier 1.1.0 with TensorRT 10.13.3.9). docker/Dockerfile's FROM is held equal
to `tag` by a test.

`python -m pipeline.facts.container freeze|check|verify` is what docker/Dockerfile runs
around its one pip install (stdlib and packaging only: it runs before the project is installed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class ServingContainer:
    tag: str
    tensorrt_llm: str
    tensorrt: str
    # The public part of the image's NGC torch build (its local label names the NGC build): a
    # pre-release, so a requirement must admit pre-releases to accept it.
    torch: str
    python: str
    cuda: str
    # The driver the image's CUDA was released with: the oldest a host needs, except on a data-center GPU
    # whose older driver branch CUDA's forward-compatibility package supports.
    driver: str

    @property
    def release(self) -> str:
        """The Triton release ('26.04'), as NGC tags it."""
        return self.tag.rsplit(":", 1)[1].split("-", 1)[0]


SERVING_CONTAINER = ServingContainer(
    tag="nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3",
    tensorrt_llm="1.2.1",
    tensorrt="10.14.1.48",
    torch="2.10.0a0",
    python="3.12.3",
    cuda="13.1.0.036",
    driver="590.44.01",
)
# Where the image keeps Triton (the Triton images' layout; tritonserver is also on PATH).
TRITON_HOME = Path("/opt/tritonserver")


@dataclass(frozen=True)
class ServePorts:
    """Where a server listens. The defaults are tritonserver's own (its --help: --http-port 8000,
    --grpc-port 8001, --metrics-port 8002), so its clients' defaults reach it; loopback unless told."""

    host: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def named(self) -> dict[str, int]:
        """Each port by the option that sets it."""
        return {"--http-port": self.http, "--grpc-port": self.grpc, "--metrics-port": self.metrics}


# tritonserver's defaults: where `serve` listens unless told, and, in the container, what docker publishes.
DEFAULT_PORTS = ServePorts()


# Where `serve` mounts a combined repository of several variants (pipeline.serving.combined), and, each
# in a folder of its own below VARIANTS_MOUNT, the versions its models read.
COMBINED_MOUNT = "/models"
VARIANTS_MOUNT = "/variants"


def _published(ports: ServePorts) -> list[str]:
    """docker's -p for each port: inside, the server listens on its defaults; docker publishes them
    where `ports` says."""
    return [
        arg
        for outside, inside in zip(ports.named().values(), DEFAULT_PORTS.named().values(), strict=True)
        for arg in ("-p", f"{ports.host}:{outside}:{inside}")
    ]


def serve_argv(repository: Path, mount_path: str, ports: ServePorts = DEFAULT_PORTS) -> list[str]:
    """`docker run` serving one published version: mounted where its gpt_model_path points, read-only
    (the Python backend writes __pycache__ beside each model.py, and its stub's isolated interpreter
    ignores PYTHONDONTWRITEBYTECODE, so only the mount keeps the verified version as it is)."""
    return [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host",
        *_published(ports),
        "-v", f"{repository}:{mount_path}:ro",
        SERVING_CONTAINER.tag,
        "tritonserver", f"--model-repository={mount_path}",
    ]  # fmt: skip


def combined_serve_argv(
    repository: Path, versions: dict[str, Path], ports: ServePorts = DEFAULT_PORTS
) -> list[str]:
    """`docker run` serving a combined repository: it at COMBINED_MOUNT and each version (by its folder
    name below VARIANTS_MOUNT) read-only where the combined repository's links and paths point."""
    mounts = [("-v", f"{version}:{VARIANTS_MOUNT}/{name}:ro") for name, version in versions.items()]
    return [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host",
        *_published(ports),
        "-v", f"{repository}:{COMBINED_MOUNT}:ro",
        *(arg for mount in mounts for arg in mount),
        SERVING_CONTAINER.tag,
        "tritonserver", f"--model-repository={COMBINED_MOUNT}",
    ]  # fmt: skip


# --- what the Dockerfile runs -------------------------------------------------------------------


def installed() -> dict[str, str]:
    """name -> version of every installed distribution (names normalized as pip compares them)."""
    out = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(_normalize(name), dist.version)
    return out


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def freeze_lines(dists: dict[str, str]) -> list[str]:
    """Constraint lines pinning every distribution to the version it has (pip's -c format).

    A version that is not PEP 440 (some distro-installed packages) cannot be a constraint and
    pip will not touch such a package anyway: it is left out rather than failing the parse.
    """
    from packaging.version import InvalidVersion, Version

    lines = []
    for name, version in sorted(dists.items()):
        try:
            Version(version)
        except InvalidVersion:
            continue
        lines.append(f"{name}=={version}")
    return lines


def read_frozen(text: str) -> dict[str, str]:
    pairs = (line.split("==", 1) for line in text.splitlines() if "==" in line)
    return {name.strip(): version.strip() for name, version in pairs}


def project_requirements(pyproject_text: str, extras: tuple[str, ...] = ("ray",)) -> list[str]:
    """The requirement strings the image's install asks for: the dependencies and the given extras."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib

    project = tomllib.loads(pyproject_text)["project"]
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(r for extra in extras for r in optional.get(extra, []))]


def requirement_problems(requirements: list[str], image: dict[str, str]) -> list[str]:
    """Each requirement a package the image already has does not satisfy, as one line naming the package,
    the image's version and what the project needs. The install pins every image package (-c), so pip
    would otherwise fail on these with a resolver trace. Which versions the image has (protobuf, click,
    anything Ray or typer pull in) is not published with the image: this is where it shows."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    problems = []
    for text in requirements:
        requirement = Requirement(text)
        have = image.get(_normalize(requirement.name))
        if have is None or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        try:
            ok = requirement.specifier.contains(Version(have), prereleases=True)
        except InvalidVersion:
            continue  # not a PEP 440 version: freeze_lines leaves it unpinned, pip will not touch it
        if not ok:
            problems.append(
                f"the image has {requirement.name} {have}, the project needs {requirement.name}{requirement.specifier}"
            )
    return problems


def image_problems(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What the project's install changed in the image, and where the image is not the pinned one."""
    problems = [
        f"{name} {version} was {'replaced by ' + after[name] if name in after else 'removed'}"
        for name, version in sorted(before.items())
        if after.get(name) != version
    ]
    wanted = {"tensorrt-llm": SERVING_CONTAINER.tensorrt_llm, "tensorrt": SERVING_CONTAINER.tensorrt}
    for name, version in wanted.items():
        have = after.get(name)
        if have != version and not (name == "tensorrt" and have is None):
            # TensorRT may be installed without pip metadata; the build probe reads it by import.
            problems.append(f"{name} is {have or 'not installed'}, pipeline.facts.container pins {version}")
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["freeze"] and len(argv) == 1:
        print("\n".join(freeze_lines(installed())))
        return 0
    if argv[:1] == ["check"] and len(argv) == 3:
        requirements = project_requirements(Path(argv[2]).read_text())
        problems = requirement_problems(requirements, read_frozen(Path(argv[1]).read_text()))
        for problem in problems:
            print(f"ERROR {problem}", file=sys.stderr)
        if problems:
            print(
                f"TIP {SERVING_CONTAINER.tag} carries these; widen the requirement in pyproject.toml "
                "if the project works with the image's version",
                file=sys.stderr,
            )
        return 1 if problems else 0
    if argv[:1] == ["verify"] and len(argv) == 2:
        problems = image_problems(read_frozen(Path(argv[1]).read_text()), installed())
        for problem in problems:
            print(f"ERROR {problem}", file=sys.stderr)
        if problems:
            print(
                f"TIP the image must be {SERVING_CONTAINER.tag} as pipeline/facts/container.py describes it, "
                "and the project's requirements must accept what it carries",
                file=sys.stderr,
            )
        return 1 if problems else 0
    print(
        "usage: python -m pipeline.facts.container freeze | check FROZEN_FILE PYPROJECT | verify FROZEN_FILE",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
