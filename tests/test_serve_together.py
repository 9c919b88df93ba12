"""`trtllm-pipeline serve` of several variants at once: one repository, each variant's models under names of
its own (pipeline.serving.combined), every version served read-only.

The end-to-end test runs the command as a user does (a child process, then SIGINT) on a real tritonserver
with two variants; the others look at the combined repository and the container's command.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from publish_upstream import (
    ON_A100,
    Upstream,
    a100_engine_info,
    config_with,
    run_publish,
)
from test_serve import serve_cli
from test_smoke import CONFIG_CHANGES, MAX_TOKENS, shm_regions, shm_regions_of
from tiny_checkpoints import tiny_checkpoint

from pipeline.cli import main
from pipeline.facts.formats import Precision
from pipeline.serving import release
from pipeline.serving.client import generate, generate_stream
from pipeline.serving.combined import SEPARATOR, Member, prefix, write_combined
from pipeline.serving.render import CONFIG_NAME, MODEL_NAMES, parse_model_config
from pipeline.serving.smoke import reference_answers

PROFILES = ("latency", "throughput")
LATENCY = ("trtllm-engine", "int8_sq", "latency")
THROUGHPUT = ("trtllm-engine", "int8_sq", "throughput")
PROMPT = "The library opens at"


def _publish_both(tmp_path: Path, upstream: Upstream, **changes: str) -> Path:
    config = config_with(tmp_path, **CONFIG_CHANGES, **changes)
    for profile in PROFILES:
        assert run_publish(config, tmp_path / "work", upstream, profile=profile).error is None
    return tmp_path / "pipeline.toml"


def _version(tmp_path: Path, variant: tuple[str, str, str]) -> Path:
    return (tmp_path / "published" / "tiny-mistral" / Path(*variant) / "current").resolve()


def _config(folder: Path, model: str):
    return parse_model_config((folder / model / CONFIG_NAME).read_text(), model, expected_name=model)


def test_names_cannot_collide():
    """A combined name splits back into its variant and model in one way only: backends, precisions and
    model names hold no separator (a profile may: it is what lies between the precision and the model)."""
    from pipeline.backends import BACKENDS

    for fixed in (*BACKENDS, *(p.value for p in Precision), *MODEL_NAMES):
        assert SEPARATOR not in fixed, fixed
    profiles = ("a", "a.b", "b", "a.b.c", "b.c", "a-b")
    names = [
        prefix((backend, precision.value, profile)) + model
        for backend in BACKENDS
        for precision in Precision
        for profile in profiles
        for model in MODEL_NAMES
    ]
    assert len(set(names)) == len(names)


def test_the_combined_repository_renames_every_reference_and_writes_nothing_into_the_versions(tmp_path):
    config = _publish_both(tmp_path, Upstream())
    assert config.is_file()
    members = [Member(v, _version(tmp_path, v), str(_version(tmp_path, v))) for v in (LATENCY, THROUGHPUT)]
    folder = tmp_path / "combined"
    served = write_combined(members, folder)

    assert served == {m.variant: [prefix(m.variant) + name for name in sorted(MODEL_NAMES)] for m in members}
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for names in served.values() for n in names)
    for member in members:
        renamed = prefix(member.variant)
        ensemble = _config(folder, renamed + "ensemble")
        steps = [step.model_name for step in ensemble.ensemble_scheduling.step]
        assert steps == [renamed + m for m in ("preprocessing", "tensorrt_llm", "postprocessing")]
        bls = _config(folder, renamed + "tensorrt_llm_bls").parameters
        assert bls["tensorrt_llm_model_name"].string_value == renamed + "tensorrt_llm"
        assert bls["preprocessing_model_name"].string_value == renamed + "preprocessing"
        # Paths point into this variant's own version.
        engine = _config(folder, renamed + "tensorrt_llm").parameters["gpt_model_path"].string_value
        assert engine == f"{member.version}/tensorrt_llm/1/engine"
        for model in ("preprocessing", "postprocessing", "tensorrt_llm_bls"):
            tokenizer = _config(folder, renamed + model).parameters["tokenizer_dir"].string_value
            assert tokenizer == f"{member.version}/preprocessing/tokenizer"
        model_py = folder / (renamed + "preprocessing") / "1" / "model.py"
        assert model_py.is_symlink() and model_py.resolve() == member.version / "preprocessing/1/model.py"
        assert release.check_version(member.version).ok


def test_a_version_whose_bls_names_its_models_fixed_is_refused_naming_it(tmp_path):
    """A version published before the BLS model read preprocessing_model_name cannot be renamed."""
    import shutil

    from pipeline.core.errors import InputError

    _publish_both(tmp_path, Upstream())
    older = tmp_path / "older"
    shutil.copytree(_version(tmp_path, THROUGHPUT), older, symlinks=True)
    bls = older / "tensorrt_llm_bls" / CONFIG_NAME
    bls.chmod(0o644)
    lines = bls.read_text().splitlines(keepends=True)
    bls.write_text("".join(line for line in lines if '"preprocessing_model_name"' not in line))
    members = [Member(LATENCY, _version(tmp_path, LATENCY), "/v/a"), Member(THROUGHPUT, older, "/v/b")]
    with pytest.raises(InputError, match="calls the other models by fixed names") as raised:
        write_combined(members, tmp_path / "combined")
    assert str(older) in str(raised.value)


def test_an_unpublished_variant_among_several_is_one_line(tmp_path, capsys):
    config = config_with(tmp_path, **CONFIG_CHANGES)
    assert run_publish(config, tmp_path / "work", Upstream(), profile="latency").error is None
    code = main(["serve", "--config", str(tmp_path / "pipeline.toml"), "--precision", "int8_sq"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "trtllm-engine/int8_sq/throughput/current: nothing published for this variant" in err


def test_on_a_gpu_target_one_docker_run_mounts_each_version_read_only(tmp_path, capsys):
    config = _publish_both(tmp_path, Upstream(engine_info=a100_engine_info()), **ON_A100)
    work = tmp_path / "work"
    code = main(
        [
            "serve",
            "--config",
            str(config),
            "--work-dir",
            str(work),
            "--precision",
            "int8_sq",
            "--http-port",
            "9000",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    commands = [line for line in out.splitlines() if line.startswith("docker run")]
    assert len(commands) == 1
    argv = shlex.split(commands[0])
    mounts = [argv[i + 1].split(":") for i, a in enumerate(argv) if a == "-v"]
    combined = (work / "serve" / "combined" / "repository").absolute()
    assert mounts[0] == [str(combined), "/models", "ro"]
    names = {SEPARATOR.join(v): _version(tmp_path, v) for v in (LATENCY, THROUGHPUT)}
    assert {(Path(src), dst, ro) for src, dst, ro in mounts[1:]} == {
        (version, f"/variants/{name}", "ro") for name, version in names.items()
    }
    assert argv[-2:] == ["tritonserver", "--model-repository=/models"]
    assert "-p" in argv and "127.0.0.1:9000:8000" in argv
    # Inside the container every link and path of the combined repository lands on a file of a version.
    for name, version in names.items():
        engine = _config(combined, f"{name}.tensorrt_llm").parameters["gpt_model_path"].string_value
        assert engine == f"/variants/{name}/tensorrt_llm/1/engine"
        assert (version / Path(engine).relative_to(f"/variants/{name}")).is_dir()
    links = [p for p in combined.rglob("*") if p.is_symlink()]
    assert links
    for link in links:
        target = Path(os.readlink(link))
        name = target.parts[2]
        assert (
            target.parts[:2] == ("/", "variants")
            and (names[name] / target.relative_to(f"/variants/{name}")).is_file()
        )


def _publish_tiny(tmp_path, tiny_model_dir, tmp_path_factory) -> Path:
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq"),
    )
    return _publish_both(tmp_path, upstream)


@pytest.mark.triton
def test_two_variants_answer_on_one_server_under_their_own_names_until_sigint(
    tmp_path, tiny_model_dir, tmp_path_factory
):
    """`serve --precision int8_sq` (two profiles) as a user runs it: each variant's ensemble and BLS
    model answer as the reference runtime does for that variant's own engine; exit 130 on SIGINT, shared
    memory freed, nothing written into either version."""
    config = _publish_tiny(tmp_path, tiny_model_dir, tmp_path_factory)
    with serve_cli(
        config, tmp_path / "work", "--backend", "trtllm-engine", "--precision", "int8_sq"
    ) as served:
        url = served.url
        assert url in served.wait_for("ready: ")
        for variant in (LATENCY, THROUGHPUT):
            reported = served.wait_for("/".join(variant) + ": ")
            renamed = prefix(variant)
            for model in MODEL_NAMES:
                assert f"{url}/v2/models/{renamed}{model}" in reported
            (expected,) = reference_answers(_version(tmp_path, variant), [PROMPT], MAX_TOKENS)
            payload = {"text_input": PROMPT, "max_tokens": MAX_TOKENS}
            assert generate(url, renamed + "ensemble", payload)["text_output"] == expected
            streamed = generate_stream(url, renamed + "tensorrt_llm_bls", {**payload, "stream": True})
            assert "".join(e["text_output"] for e in streamed if "text_output" in e) == expected
        ours = shm_regions_of(served.process.pid)
        assert ours
        out = served.interrupt()
    assert "stopped by SIGINT" in out and "Traceback" not in out
    assert ours & shm_regions() == set()
    for variant in (LATENCY, THROUGHPUT):
        version = _version(tmp_path, variant)
        assert release.check_version(version).ok and not list(version.rglob("__pycache__"))


def test_a_pytorch_release_joins_through_its_llmapi_model(tmp_path, tiny_model_dir):
    """A CPU trtllm-pytorch version: its llmapi model renamed, and model.yaml's checkpoint (relative to the
    llmapi repository in the version) pointing into the version."""
    from publish_upstream import cpu_engine_info
    from test_pytorch_serving import _publish

    info = cpu_engine_info().model_copy(update={"backend": "reference-pytorch"})
    _, report, current = _publish(tmp_path, tiny_model_dir, target_lines=None, info=info)
    assert report.error is None, report.error
    variant = ("trtllm-pytorch", "int8_wo", "latency")
    version = current.resolve()
    served = write_combined([Member(variant, version, str(version))], tmp_path / "combined")
    assert served == {variant: ["trtllm-pytorch.int8_wo.latency.tensorrt_llm"]}
    model = tmp_path / "combined" / "trtllm-pytorch.int8_wo.latency.tensorrt_llm"
    assert _config(model.parent, model.name).backend == "python"
    args = json.loads((model / "1" / "model.yaml").read_text())
    assert args["model"] == f"{version}/checkpoint/tiny-mistral"
    assert (version / "checkpoint" / "tiny-mistral" / "model.safetensors").is_file()
    assert (model / "1" / "model.py").resolve() == version / "llmapi/tensorrt_llm/1/model.py"
    assert release.check_version(version).ok


def test_on_a_gpu_target_a_pytorch_release_gets_one_command_per_variant(tmp_path, tiny_model_dir, capsys):
    from test_pytorch_serving import _publish

    on_a100 = 'gpu = "a100-40gb"\n'
    info = a100_engine_info(backend="trtllm-pytorch")
    config, report, _ = _publish(tmp_path, tiny_model_dir, target_lines=on_a100, info=info)
    assert report.error is None, report.error
    engine = Upstream(engine_info=a100_engine_info())
    assert run_publish(config, tmp_path / "work", engine, precision="int8_wo").error is None
    argv = ["serve", "--config", str(config.source), "--work-dir", str(tmp_path / "work")]
    argv += ["--backend", "trtllm-engine", "--backend", "trtllm-pytorch", "--precision", "int8_wo"]
    code = main([*argv, "--profile", "latency"])
    out = capsys.readouterr().out
    assert code == 0
    assert "trtllm-pytorch/int8_wo/latency is a PyTorch-backend release" in out
    commands = [shlex.split(line) for line in out.splitlines() if line.startswith("docker run")]
    assert len(commands) == 2
    published = [[a for i, a in enumerate(c) if i and c[i - 1] == "-p"] for c in commands]
    assert published[0][0] == "127.0.0.1:8000:8000" and published[1][0] == "127.0.0.1:8010:8000"
    assert not (tmp_path / "work" / "serve" / "combined").exists()


@pytest.mark.triton
@pytest.mark.slow
def test_an_engine_variant_and_a_pytorch_release_answer_on_one_server(
    tmp_path, tiny_model_dir, tmp_path_factory
):
    """`serve --profile latency` over both backends on the CPU: the engine variant's ensemble and the
    PyTorch release's llmapi model, each under its own name, answer as the reference runtime does on
    their own weights; exit 130 on SIGINT, nothing written into either version."""
    from publish_upstream import cpu_engine_info
    from test_pytorch_serving import _as_pytorch_build

    from pipeline.serving.models.tensornames import LlmApi
    from pipeline.serving.pytorch.smoke import release_llm

    config = config_with(
        tmp_path, **CONFIG_CHANGES, **{'precisions = ["int8_sq", "int8_wo"]': 'precisions = ["int8_sq"]'}
    )
    engine = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq"),
    )
    assert run_publish(config, tmp_path / "work", engine, profile="latency").error is None
    pytorch = Upstream(
        tokenizer_dir=tiny_model_dir,
        engine_info=cpu_engine_info().model_copy(update={"backend": "reference-pytorch"}),
        engine_edit=_as_pytorch_build(tiny_model_dir),
    )
    release_variant = ("trtllm-pytorch", "int8_wo", "latency")
    published = run_publish(config, tmp_path / "work", pytorch, backend="trtllm-pytorch", precision="int8_wo")
    assert published.error is None
    with serve_cli(config.source, tmp_path / "work", "--profile", "latency") as served:
        url = served.url
        assert url in served.wait_for("ready: ")
        (expected,) = reference_answers(_version(tmp_path, LATENCY), [PROMPT], MAX_TOKENS)
        payload = {"text_input": PROMPT, "max_tokens": MAX_TOKENS}
        assert generate(url, prefix(LATENCY) + "ensemble", payload)["text_output"] == expected
        llm, _ = release_llm(_version(tmp_path, release_variant))
        want = llm.decode(llm.generate(llm.encode(PROMPT), max_tokens=MAX_TOKENS).token_ids)
        asked = {LlmApi.TEXT_INPUT: PROMPT, LlmApi.MAX_TOKENS: MAX_TOKENS, LlmApi.EXCLUDE_INPUT: True}
        got = generate(url, prefix(release_variant) + LlmApi.MODEL, asked)[LlmApi.TEXT_OUTPUT]
        assert got == want
        served.interrupt()
    for variant in (LATENCY, release_variant):
        version = _version(tmp_path, variant)
        assert release.check_version(version).ok and not list(version.rglob("__pycache__"))
