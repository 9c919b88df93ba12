"""What publish writes for the PyTorch backend: one release, two consumers of one checkpoint.

    <release>/llmapi/tensorrt_llm/config.pbtxt     Triton's llmapi model, as upstream ships it
    <release>/llmapi/tensorrt_llm/1/model.yaml     the LLM(...) arguments: the profile's options, the
                                                   checkpoint, and triton_config (batch, decoupled)
    <release>/checkpoint/<model>/                  the Hugging Face checkpoint and its tokenizer
    <release>/trtllm-serve/llm_api_options.yaml    trtllm-serve --extra_llm_api_options
    <release>/trtllm-serve/command.json            the exact trtllm-serve argv

Upstream's llmapi model.py (TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/1/model.py) reads
model.yaml from its version folder with yaml.safe_load, hands `triton_config`'s max_batch_size and
decoupled to Triton in auto_complete_config, and every other key to update_llm_args_with_extra_dict
and LLM(**args). trtllm-serve (tensorrt_llm/commands/serve.py) takes MODEL (a checkpoint path), and
`--extra_llm_api_options FILE` whose keys override its own flags' values.

Both read the checkpoint where the serving container mounts the release (publish.mount_path, read-only)
on a GPU host; on the CPU the stand-ins (pipeline.serving.models.llmapi_cpu, pipeline.serving.pytorch.
openai_server) resolve the same names relative to the release.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.core.atomic import link_or_copy
from pipeline.core.errors import InputError
from pipeline.facts import layout
from pipeline.facts.container import DEFAULT_PORTS, SERVING_CONTAINER, ServePorts
from pipeline.serving.render import CONFIG_NAME, parse_model_config
from pipeline.serving.repository import HELPERS, tokenizer_files

MODEL_NAME = "tensorrt_llm"  # the llmapi model's name in its config.pbtxt
MODEL_YAML = "model.yaml"
OPTIONS_FILE = layout.LLM_API_OPTIONS  # the build's file, under the same name
CPU_MODEL = "llmapi_cpu"  # the project's Python model that plays upstream's model.py on the CPU
# In the container, where the serve command mounts upstream's llmapi model code (model.py, helpers.py)
# from a TensorRT-LLM checkout at the container's tag: the Triton docs ask to clone it, the image
# does not carry it, and this project does not ship upstream's code.
UPSTREAM_MODEL_MOUNT = "/opt/trtllm-llmapi-model"
UPSTREAM_MODEL_SOURCE = "<TensorRT-LLM v1.2.1 checkout>/triton_backend/all_models/llmapi/tensorrt_llm/1"
# trtllm-serve listens on every interface in the container, so `docker run -p` reaches it.
SERVE_HOST = "0.0.0.0"


def model_yaml(options: dict[str, Any], *, checkpoint: str, decoupled: bool) -> dict[str, Any]:
    """model.yaml's contents: upstream's keys (model, backend, parallel sizes, triton_config) with the
    profile's LLM API options. max_batch_size 0 in triton_config is upstream's: the model takes one
    prompt per request, and the LLM API batches concurrent requests up to options' max_batch_size."""
    return {
        "model": checkpoint,
        "backend": "pytorch",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        **options,
        "triton_config": {"max_batch_size": 0, "decoupled": decoupled},
    }


def serve_argv(
    checkpoint: str, options_file: str, *, host: str = SERVE_HOST, port: int = DEFAULT_PORTS.http
) -> list[str]:
    """trtllm-serve's command line (1.2.x click options: MODEL, --backend, --extra_llm_api_options,
    --host, --port). The options file sets max_batch_size, max_num_tokens, max_seq_len and the KV
    cache; its keys override the flags' defaults (update_llm_args_with_extra_dict), so none is repeated."""
    return [
        "trtllm-serve", checkpoint,
        "--backend", "pytorch",
        "--extra_llm_api_options", options_file,
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip


def release_paths(root: str, model: str) -> tuple[str, str]:
    """(checkpoint, options file) as the consumers see them, under `root` (the mount path, or a
    relative root on the CPU)."""
    base = Path(root)
    checkpoint = layout.served_checkpoint_dir(base, model)
    return str(checkpoint), str(base / layout.SERVE_BUNDLE / OPTIONS_FILE)


def template_text() -> str:
    return resources.files("pipeline.serving").joinpath("templates", "llmapi", CONFIG_NAME).read_text()


def write_release(
    root: Path,
    *,
    model: str,
    checkpoint_dir: Path,
    checkpoint_sha256: dict[str, str],
    tokenizer_dir: Path,
    tokenizer_sha256: dict[str, str],
    options: dict[str, Any],
    mount_path: str | None,
    decoupled: bool,
) -> dict[str, str]:
    """Write the release at root (created). mount_path None: served on the CPU by the stand-ins, which
    find the checkpoint relative to the release. Returns the sha256 of every checkpoint and tokenizer file placed, each
    checked where it lies against the sha256 given (from the artifacts' manifests)."""
    served_root = mount_path if mount_path is not None else "."
    checkpoint, options_file = release_paths(served_root, model)
    # Relative paths in model.yaml resolve against the model repository (llmapi/), one level down.
    yaml_checkpoint = checkpoint if mount_path is not None else str(Path("..") / checkpoint)

    version_dir = root / layout.LLMAPI_REPOSITORY / MODEL_NAME / "1"
    version_dir.mkdir(parents=True)
    text = template_text()
    parse_model_config(text, f"llmapi/{MODEL_NAME}/{CONFIG_NAME}", expected_name=MODEL_NAME)
    (version_dir.parent / CONFIG_NAME).write_text(text)
    # JSON is YAML: yaml.safe_load (upstream's reader) takes it, and the pipeline needs no YAML writer.
    yaml = model_yaml(options, checkpoint=yaml_checkpoint, decoupled=decoupled)
    (version_dir / MODEL_YAML).write_text(json.dumps(yaml, indent=2) + "\n")
    if mount_path is None:
        models = resources.files("pipeline.serving.models")
        for name, src in [("model.py", models.joinpath(CPU_MODEL, "model.py"))] + [
            (h, models.joinpath(h)) for h in HELPERS
        ]:
            (version_dir / name).write_text(src.read_text())

    bundle = root / layout.SERVE_BUNDLE
    bundle.mkdir()
    (bundle / OPTIONS_FILE).write_text(json.dumps(options, indent=2) + "\n")
    command = {"argv": serve_argv(checkpoint, options_file), "cwd": served_root}
    (bundle / layout.SERVE_COMMAND).write_text(json.dumps(command, indent=2) + "\n")

    served = layout.served_checkpoint_dir(root, model)
    placed = {}
    for rel, sha256 in sorted(checkpoint_sha256.items()):
        link_or_copy(checkpoint_dir / rel, served / rel, sha256)
        placed[str(Path(layout.SERVED_CHECKPOINTS) / model / rel)] = sha256
    for src in tokenizer_files(tokenizer_dir):
        if (served / src.name).exists():
            continue  # the checkpoint's own copy, hashed above
        sha256 = tokenizer_sha256.get(src.name)
        if sha256 is None:
            raise InputError("not in its artifact's manifest", path=src, hint="rerun fetch (--force)")
        link_or_copy(src, served / src.name, sha256)
        placed[str(Path(layout.SERVED_CHECKPOINTS) / model / src.name)] = sha256
    return placed


def read_command(release: Path) -> dict[str, Any]:
    return json.loads((release / layout.SERVE_BUNDLE / layout.SERVE_COMMAND).read_text())


def docker_llmapi_argv(version: Path, mount_path: str, ports: ServePorts = DEFAULT_PORTS) -> list[str]:
    """`docker run` serving a release's llmapi repository: the release mounted read-only where
    model.yaml points, upstream's model code mounted beside it, the repository assembled in the
    container's /tmp (the Python backend writes __pycache__ beside model.py), then tritonserver."""
    script = (
        f"cp -r {mount_path}/{layout.LLMAPI_REPOSITORY} /tmp/llmapi"
        f" && cp {UPSTREAM_MODEL_MOUNT}/*.py /tmp/llmapi/{MODEL_NAME}/1/"
        " && exec tritonserver --model-repository=/tmp/llmapi"
    )
    return [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host",
        *_published(ports, "--http-port", "--grpc-port", "--metrics-port"),
        "-v", f"{version}:{mount_path}:ro",
        "-v", f"{UPSTREAM_MODEL_SOURCE}:{UPSTREAM_MODEL_MOUNT}:ro",
        SERVING_CONTAINER.tag,
        "bash", "-c", script,
    ]  # fmt: skip


def docker_serve_argv(
    version: Path, mount_path: str, argv: list[str], ports: ServePorts = DEFAULT_PORTS
) -> list[str]:
    """`docker run` of the bundle's trtllm-serve command, the release mounted read-only."""
    return [
        "docker", "run", "--rm", "--gpus", "all", "--ipc=host",
        *_published(ports, "--http-port"),
        "-v", f"{version}:{mount_path}:ro",
        SERVING_CONTAINER.tag,
        *argv,
    ]  # fmt: skip


def _published(ports: ServePorts, *options: str) -> list[str]:
    """docker's -p for each port named (by the option that sets it), onto the server's default inside."""
    outside, inside = ports.named(), DEFAULT_PORTS.named()
    return [arg for o in options for arg in ("-p", f"{ports.host}:{outside[o]}:{inside[o]}")]
