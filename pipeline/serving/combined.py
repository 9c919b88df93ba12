"""Several published variants in one model repository, each under names of its own, never written into.

Every model of a variant is served as `<backend>.<precision>.<profile>.<model>`
(`trtllm-engine.int8_sq.latency.ensemble`). Backend and precision names hold no
dot and neither do the models' own names, so a combined name splits back into
its variant and model in one way only: two variants never share a name.

The combined repository holds, per variant and model, the model's config.pbtxt
rewritten (its name, the ensemble's steps, the BLS model's
`tensorrt_llm_model_name` and `preprocessing_model_name`, every path parameter)
and, for the llmapi model, its model.yaml (the checkpoint path); every other
file is a symbolic link to the file in the version. Paths point into the
version where the server sees it (`root`): the version itself on this machine,
or where `docker run` mounts it read-only in the container. The links make no
copy of an engine, and whatever the Python backend writes beside a model.py
(`__pycache__`) lands in the combined folder.
"""

from __future__ import annotations

import json
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.core.errors import InputError
from pipeline.serving.release_manifest import RELEASE_MANIFEST, ReleaseManifest
from pipeline.serving.render import CONFIG_NAME, parse_model_config

SEPARATOR = "."
# The parameters that name another model of the same repository, and those that hold a path
# (absolute, or relative to the repository's root).
NAME_PARAMETERS = ("tensorrt_llm_model_name", "preprocessing_model_name")
PATH_PARAMETERS = ("tokenizer_dir", "gpt_model_path")
BLS_MODEL = "tensorrt_llm_bls"
MODEL_YAML = "model.yaml"  # the llmapi model's LLM(...) arguments: its `model` is the checkpoint's path


def prefix(variant: tuple[str, str, str]) -> str:
    """What precedes each model's own name: `<backend>.<precision>.<profile>.`."""
    return SEPARATOR.join(variant) + SEPARATOR


@dataclass(frozen=True)
class Member:
    """One variant served in the combined repository."""

    variant: tuple[str, str, str]  # backend, precision, profile
    version: Path  # the published version (its files are what is served)
    root: str  # where the server finds the version: its own path here, its mount in a container

    @property
    def manifest(self) -> ReleaseManifest:
        return ReleaseManifest.model_validate_json((self.version / RELEASE_MANIFEST).read_text())


def write_combined(members: list[Member], folder: Path) -> dict[tuple[str, str, str], list[str]]:
    """The combined repository at `folder` (made afresh); each variant's served model names, in the
    order its repository lists them."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    served = {}
    for member in members:
        served[member.variant] = _write_member(member, folder)
    return served


def _write_member(member: Member, folder: Path) -> list[str]:
    manifest = member.manifest
    # A PyTorch-backend release holds Triton's llmapi repository in a folder of its own.
    repository = PurePosixPath(manifest.serving.llmapi_repository or ".")
    names: list[str] = []
    for entry in manifest.files:
        path = PurePosixPath(entry.path)
        if repository.parts and path.parts[: len(repository.parts)] != repository.parts:
            continue  # beside the repository (the checkpoint, the trtllm-serve bundle): reached by path
        model, *rest = path.relative_to(repository).parts
        if not rest:
            continue  # no model's (gate.json): Triton loads folders only
        target = folder / (prefix(member.variant) + model) / Path(*rest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if rest == [CONFIG_NAME]:
            names.append(prefix(member.variant) + model)
            target.write_text(_renamed_config(member, manifest, repository, path))
        elif rest[-1] == MODEL_YAML:
            target.write_text(_relocated_model_yaml(member, manifest, repository, path))
        else:
            target.symlink_to(f"{member.root}/{path}")
    return names


def _relocated(value: str, member: Member, manifest: ReleaseManifest, repository: PurePosixPath) -> str:
    """A path as the version's models read it (absolute under its mount path, or relative to its
    repository's root), pointing where the server finds the version."""
    if not value:
        return value  # an unused path parameter
    path = PurePosixPath(value)
    mount = manifest.serving.mount_path
    if path.is_absolute():
        if mount is None or not path.is_relative_to(mount):
            raise InputError(
                f"{value} lies outside the version (its mount path is {mount})",
                path=member.version,
                hint="publish it afresh: `trtllm-pipeline publish --force`",
            )
        inside = path.relative_to(mount)
    else:
        inside = PurePosixPath(posixpath.normpath(repository / path))
    return f"{member.root}/{inside}"


def _renamed_config(
    member: Member, manifest: ReleaseManifest, repository: PurePosixPath, path: PurePosixPath
) -> str:
    from google.protobuf import text_format

    source = member.version / path
    config = parse_model_config(source.read_text(), str(source), expected_name=path.parent.name)
    renamed = prefix(member.variant)
    config.name = renamed + config.name
    for step in config.ensemble_scheduling.step:
        step.model_name = renamed + step.model_name
    if config.name == renamed + BLS_MODEL and not all(key in config.parameters for key in NAME_PARAMETERS):
        raise InputError(
            f"its {BLS_MODEL} model calls the other models by fixed names (published before `serve` could "
            "serve several variants at once), so it cannot be renamed",
            path=member.version,
            hint="serve it alone, or publish it afresh: `trtllm-pipeline publish --force`",
        )
    for key in NAME_PARAMETERS:
        if key in config.parameters:
            config.parameters[key].string_value = renamed + config.parameters[key].string_value
    for key in PATH_PARAMETERS:
        if key in config.parameters:
            value = config.parameters[key].string_value
            config.parameters[key].string_value = _relocated(value, member, manifest, repository)
    return text_format.MessageToString(config)


def _relocated_model_yaml(
    member: Member, manifest: ReleaseManifest, repository: PurePosixPath, path: PurePosixPath
) -> str:
    # publish writes it as JSON (which YAML readers take), so JSON reads it back.
    args = json.loads((member.version / path).read_text())
    args["model"] = _relocated(args["model"], member, manifest, repository)
    return json.dumps(args, indent=2) + "\n"
