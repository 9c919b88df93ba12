"""The serving container: one name everywhere, the Dockerfile's image, the image install's checks, torch.

The container's contents are its row in triton-inference-server/server
docs/introduction/compatibility.md at commit 0f963c9a8c6913aa4cd9b57ee04f9c2b76ee8d2a
(26.04-trtllm-python-py3: Python 3.12.3, torch 2.10.0a0+b4e4ee81d3.nv<build>, TensorRT
10.14.1.48, TensorRT-LLM 1.2.1, CUDA 13.1.0.036, CUDA driver 590.44.01; the previous 1.2.1-less
releases carry 1.2.0 or 1.1.0). The release notes' "26.04 is based on CUDA 13.2.1" row is the plain
Triton image's, not the trtllm one's.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.version import Version

from pipeline.facts import container
from pipeline.facts.config import PublishSection
from pipeline.facts.container import SERVING_CONTAINER, image_problems, read_frozen

TAG = re.compile(r"nvcr\.io/nvidia/tritonserver:[\w.-]+")
RELEASE = re.compile(r"\b\d\d\.\d\d-trtllm-python-py3\b")


def tracked_text_files(repo_root):
    names = subprocess.run(
        ["git", "ls-files"], cwd=repo_root, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in names:
        path = repo_root / name
        try:
            yield name, path.read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue


def test_the_container_is_the_release_that_carries_tensorrt_llm_1_2_1():
    assert SERVING_CONTAINER.tag == "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"
    assert (SERVING_CONTAINER.tensorrt_llm, SERVING_CONTAINER.tensorrt) == ("1.2.1", "10.14.1.48")
    assert SERVING_CONTAINER.release == "26.04"
    assert (SERVING_CONTAINER.cuda, SERVING_CONTAINER.driver) == ("13.1.0.036", "590.44.01")
    assert PublishSection().container == SERVING_CONTAINER.tag


def test_the_dockerfile_builds_from_the_container(repo_root):
    text = (repo_root / "docker" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms == [SERVING_CONTAINER.tag]
    # Its version checks read pipeline/facts/container.py rather than a copy of the versions.
    assert "python3 -m pipeline.facts.container verify" in text
    assert not re.search(r"__version__\s*==", text)


def test_every_file_names_the_one_container(repo_root):
    """README, workflow, Dockerfile, configs, code: any container tag or release written is the constant's."""
    seen = []
    for name, text in tracked_text_files(repo_root):
        for tag in TAG.findall(text):
            assert tag == SERVING_CONTAINER.tag, f"{name} names {tag}"
            seen.append(name)
        for release in RELEASE.findall(text):
            assert release.startswith(SERVING_CONTAINER.release), f"{name} names {release}"
        assert not re.search(r"25\.12", text), f"{name} still mentions that release"
    assert "README.md" in seen and "docker/Dockerfile" in seen


# --- torch and the other requirements the image satisfies ----------------------------------------


def requirement(repo_root, name: str) -> Requirement:
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    return next(r for r in map(Requirement, project["dependencies"]) if r.name == name)


def locked(repo_root, name: str) -> str:
    text = (repo_root / "constraints.txt").read_text()
    return re.search(rf"^{name}==(\S+)$", text, re.MULTILINE | re.IGNORECASE).group(1)


def test_the_torch_requirement_accepts_the_containers_pre_release_build(repo_root):
    spec = requirement(repo_root, "torch").specifier
    # A pre-release is admitted by every installer only when the specifier names one (PEP 440;
    # uv's default "if-necessary-or-explicit"); otherwise one may replace the image's torch.
    assert any(Version(s.version).is_prerelease for s in spec), spec
    for build in (SERVING_CONTAINER.torch, f"{SERVING_CONTAINER.torch}+b4e4ee81d3.nv25.11"):
        assert spec.contains(build), build
    assert spec.contains(locked(repo_root, "torch"))  # and the CPU wheel of the development lock


@pytest.mark.parametrize("version", ["4.57.1", "4.57.3"])
def test_the_transformers_requirement_accepts_either_tensorrt_llm_1_2_pin(repo_root, version):
    assert requirement(repo_root, "transformers").specifier.contains(version)


# --- what the Dockerfile runs around its pip install ----------------------------------------------


def test_freeze_pins_every_installed_distribution_and_skips_unparseable_versions():
    lines = container.freeze_lines({"torch": "2.10.0a0+b4e4ee81d3.nv1", "python-apt": "2.7.7ubuntu4"})
    assert lines == ["torch==2.10.0a0+b4e4ee81d3.nv1"]
    frozen = read_frozen("\n".join(container.freeze_lines(container.installed())))
    assert frozen["torch"] == locked_torch() and "pydantic" in frozen


def locked_torch() -> str:
    import torch

    return torch.__version__


IMAGE = {"torch": "2.10.0a0+b4e4ee81d3.nv1", "tensorrt-llm": "1.2.1", "tensorrt": "10.14.1.48"}


def test_verify_passes_an_install_that_only_added_packages():
    assert image_problems(IMAGE, {**IMAGE, "typer": "0.29.2"}) == []


@pytest.mark.parametrize(
    "after, problem",
    [
        ({**IMAGE, "torch": "2.13.0"}, "torch 2.10.0a0+b4e4ee81d3.nv1 was replaced by 2.13.0"),
        ({k: v for k, v in IMAGE.items() if k != "torch"}, "torch 2.10.0a0+b4e4ee81d3.nv1 was removed"),
        ({**IMAGE, "tensorrt-llm": "1.1.0"}, "tensorrt-llm is 1.1.0, pipeline.facts.container pins 1.2.1"),
        (
            {**IMAGE, "tensorrt": "10.13.3.9"},
            "tensorrt is 10.13.3.9, pipeline.facts.container pins 10.14.1.48",
        ),
    ],
    ids=["replaced", "removed", "tensorrt-llm", "tensorrt"],
)
def test_verify_names_what_changed_or_is_not_the_pinned_image(after, problem):
    before = {k: v for k, v in after.items() if k not in ("tensorrt-llm", "tensorrt")}
    before.update(torch=IMAGE["torch"])
    assert problem in image_problems(before, after)


def test_verify_fails_the_image_build_in_one_line_per_problem(tmp_path):
    frozen = tmp_path / "image-packages.txt"
    frozen.write_text("torch==0.0.1\n")
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.facts.container", "verify", str(frozen)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
    assert errors[0] == f"ERROR torch 0.0.1 was replaced by {locked_torch()}"
    assert "Traceback" not in run.stderr


# Issue 21 item 10. Which protobuf, click or Ray-adjacent versions the 26.04 trtllm image carries is
# not published (compatibility.md lists Python, torch, TensorRT, TensorRT-LLM, CUDA; TensorRT-LLM 1.2's
# requirements.txt @000867d9b1ad62f3de1e54e111c094da492a5626 asks for an unversioned click, and no
# protobuf, typer or ray, which come in through onnx, etcd3 and the like), so the image build checks them.
def test_check_names_each_image_package_the_project_does_not_accept(repo_root):
    requirements = container.project_requirements((repo_root / "pyproject.toml").read_text())
    assert "protobuf>=5,<7" in requirements and "ray>=2.60,<3" in requirements  # the [ray] extra too
    image = {**IMAGE, "protobuf": "4.25.8", "click": "8.1.7", "ray": "2.48.0", "numpy": "1.26.4"}
    assert container.requirement_problems(requirements, image) == [
        "the image has protobuf 4.25.8, the project needs protobuf<7,>=5",
        "the image has ray 2.48.0, the project needs ray<3,>=2.60",
    ]
    # The image's pre-release torch is accepted, and what the image lacks is pip's to add.
    assert container.requirement_problems(requirements, {**IMAGE, "protobuf": "6.31.1"}) == []


def test_check_fails_the_image_build_before_pip_in_one_line(tmp_path, repo_root):
    frozen = tmp_path / "image-packages.txt"
    frozen.write_text("protobuf==4.25.8\ntorch==2.10.0a0+b4e4ee81d3.nv1\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.facts.container",
            "check",
            str(frozen),
            str(repo_root / "pyproject.toml"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == ["ERROR the image has protobuf 4.25.8, the project needs protobuf<7,>=5"]
    text = (repo_root / "docker" / "Dockerfile").read_text()
    assert text.index("container check /tmp/image-packages.txt pyproject.toml") < text.index("pip install")


def test_serve_argv_mounts_the_version_where_its_gpt_model_path_points(tmp_path):
    argv = container.serve_argv(tmp_path / "current", "/models")
    assert argv[argv.index("-v") + 1] == f"{tmp_path / 'current'}:/models:ro"
    assert argv[argv.index(SERVING_CONTAINER.tag) + 1 :] == ["tritonserver", "--model-repository=/models"]
