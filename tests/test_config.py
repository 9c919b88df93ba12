from pathlib import Path

import pytest

from pipeline.backends import backend_of
from pipeline.cli import main
from pipeline.core.errors import ConfigDeprecationWarning, ConfigError
from pipeline.facts.config import Precision, load_config

VALID = """
[model]
name = "m"
source = "hub"
repo_id = "org/model"
revision = "0123456789abcdef0123456789abcdef01234567"

[target]
gpu = "a100-40gb"

[quantization]
precisions = ["int8_sq"]

[[profiles]]
name = "latency"
max_batch_size = 1
max_input_len = 100
max_seq_len = 200
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_valid_config_resolves_paths_against_its_folder(tmp_path):
    config = load_config(write(tmp_path, VALID))
    assert config.variants == [("trtllm-engine", Precision.int8_sq)]
    assert config.calibration.dataset == tmp_path / "calib_data/offline-mix.jsonl"
    assert config.model.revision_is_commit


def test_embedded_default_and_real_job_are_valid(repo_root):
    tiny = load_config(None)
    assert tiny.target.gpu == "cpu" and tiny.model.source == "tiny"
    # The demo runs both backends, the reference runtime playing each on the CPU.
    assert [(b, p.value) for b, p in tiny.variants] == [
        ("trtllm-engine", "int8_sq"),
        ("trtllm-engine", "int8_wo"),
        ("trtllm-pytorch", "int8_wo"),
    ]
    assert {backend_of(tiny, b.name).name for b in tiny.backends} == {"reference", "reference-pytorch"}
    real = load_config(repo_root / "pipeline.toml")
    assert real.model.repo_id == "mistralai/Mistral-7B-Instruct-v0.3"
    assert real.model.revision_is_commit
    assert real.target.gpu == "a100-40gb"
    assert {(b, p.value) for b, p in real.variants} == {
        ("trtllm-engine", "int8_sq"),
        ("trtllm-engine", "int8_wo"),
        ("trtllm-pytorch", "int4_awq"),
        ("trtllm-pytorch", "int8_wo"),
    }
    assert {"latency", "throughput", "long-context"} <= {p.name for p in real.profiles}
    assert all(p.max_seq_len for p in real.profiles)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (("[target]", "[target]\ncolour = 1"), "target.colour", "unknown key"),
        (("max_batch_size = 1", 'max_batch_size = "one"'), "profiles[0].max_batch_size", "integer"),
        (
            ('precisions = ["int8_sq"]', 'precisions = ["fp8"]'),
            "quantization.precisions[0]",
            "fp8 needs sm89",
        ),
        (("max_input_len = 100", "max_input_len = 300"), "profiles[0]", "max_input_len (300) must be less"),
        (('gpu = "a100-40gb"', 'gpu = "a100-20gb"'), "target.gpu", "unknown target"),
        (
            ('gpu = "a100-40gb"', 'gpu = "a100-40gb"\nbackend = "tensorrt"'),
            "target.backend",
            "unknown backend",
        ),
        (
            ('gpu = "a100-40gb"', 'gpu = "a100-40gb"\nbackend = "reference"'),
            "target.backend",
            "backend 'reference' cannot run on target 'a100-40gb'",
        ),
        (
            ('gpu = "a100-40gb"', 'gpu = "cpu"\nbackend = "trtllm-engine"'),
            "target.backend",
            "backend 'trtllm-engine' cannot run on target 'cpu'",
        ),
        (('repo_id = "org/model"\n', ""), "model", "needs repo_id"),
        (
            ('name = "latency"', 'name = "latency"\nopt_num_tokens = 64'),
            "profiles[0].opt_num_tokens",
            "refuses",
        ),
        # Issue 21 item 3: trtllm-build takes it, but neither the gate's runner nor Triton runs it.
        (
            ("[[profiles]]", '[build]\nkv_cache_type = "continuous"\n\n[[profiles]]'),
            "build.kv_cache_type",
            "'continuous' cannot be served: the gate's ModelRunnerCpp and Triton's in-flight batching",
        ),
        # Issue 21 item 8: a choice of trtllm-build's, checked against the target.
        (
            ("[[profiles]]", '[build]\ngemm_plugin = "fp16"\n\n[[profiles]]'),
            "build.gemm_plugin",
            "unknown gemm_plugin 'fp16'; known: auto, float16, float32, bfloat16, int32, fp8, nvfp4, disable",
        ),
        (
            ("[[profiles]]", '[build]\ngemm_plugin = "fp8"\n\n[[profiles]]'),
            "build.gemm_plugin",
            "gemm_plugin 'fp8' needs sm89 or newer; target 'a100-40gb' is sm80",
        ),
    ],
)
def test_bad_config_names_file_and_field(tmp_path, change, field, words):
    old, new = change
    assert old in VALID
    path = write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == field
    assert words in info.value.problem
    assert str(path) in info.value.message


@pytest.mark.parametrize(
    ("gpu", "plugin", "ok"),
    [("h100-80gb", "fp8", True), ("l4", "fp8", True), ("a10g", "fp8", False), ("h200", "nvfp4", False)],
)
def test_gemm_plugin_is_checked_against_the_target(tmp_path, gpu, plugin, ok):
    text = VALID.replace('gpu = "a100-40gb"', f'gpu = "{gpu}"').replace(
        "[[profiles]]", f'[build]\ngemm_plugin = "{plugin}"\n\n[[profiles]]'
    )
    if ok:
        assert load_config(write(tmp_path, text)).build.gemm_plugin == plugin
    else:
        with pytest.raises(ConfigError, match=f"gemm_plugin '{plugin}' needs sm"):
            load_config(write(tmp_path, text))


def test_a_gemm_plugin_the_target_cannot_run_fails_before_any_stage(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("[[profiles]]", '[build]\ngemm_plugin = "fp8"\n\n[[profiles]]'))
    assert main(["run", "--config", str(path), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("ERROR") == 1
    assert f"{path}: build.gemm_plugin: gemm_plugin 'fp8' needs sm89" in " ".join(err.split())
    assert not (tmp_path / "w" / "store").exists()


def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys):
    path = write(tmp_path, VALID.replace("[target]", "[target]\ncolour = 1"))
    code = main(["status", "--config", str(path), "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert f"{path}: target.colour: unknown key" in " ".join(err.split())


def _runtimes(config) -> list[tuple[str, str]]:
    return [(b.name, backend_of(config, b.name).name) for b in config.backends]


def test_target_and_backend_change_independently_each_backend_defaulted_by_its_target(tmp_path):
    for gpu, runtime in (
        ("a100-40gb", "trtllm-engine"),
        ("h100-80gb", "trtllm-engine"),
        ("cpu", "reference"),
    ):
        config = load_config(write(tmp_path, VALID.replace('gpu = "a100-40gb"', f'gpu = "{gpu}"')))
        assert config.target.gpu == gpu and _runtimes(config) == [("trtllm-engine", runtime)]
    explicit = VALID.replace('gpu = "a100-40gb"', 'gpu = "l4"\nbackend = "trtllm-engine"')
    assert _runtimes(load_config(write(tmp_path, explicit))) == [("trtllm-engine", "trtllm-engine")]
    without_section = VALID.replace('[target]\ngpu = "a100-40gb"\n', "")
    assert _runtimes(load_config(write(tmp_path, without_section))) == [("trtllm-engine", "trtllm-engine")]


BOTH = VALID.replace(
    '[quantization]\nprecisions = ["int8_sq"]\n',
    '[[backends]]\nname = "trtllm-engine"\nprecisions = ["int8_sq", "int8_wo"]\n\n'
    '[[backends]]\nname = "trtllm-pytorch"\nprecisions = ["int4_awq", "int8_wo"]\n',
)


@pytest.mark.parametrize(
    "gpu, runtimes",
    [("a100-40gb", ("trtllm-engine", "trtllm-pytorch")), ("cpu", ("reference", "reference-pytorch"))],
)
def test_backends_list_each_runtime_with_its_precisions_played_by_the_reference_on_the_cpu(
    tmp_path, gpu, runtimes
):
    config = load_config(write(tmp_path, BOTH.replace('gpu = "a100-40gb"', f'gpu = "{gpu}"')))
    assert _runtimes(config) == list(zip(("trtllm-engine", "trtllm-pytorch"), runtimes, strict=True))
    assert [(b, p.value) for b, p in config.variants] == [
        ("trtllm-engine", "int8_sq"),
        ("trtllm-engine", "int8_wo"),
        ("trtllm-pytorch", "int4_awq"),
        ("trtllm-pytorch", "int8_wo"),
    ]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            (
                'name = "trtllm-pytorch"\nprecisions = ["int4_awq", "int8_wo"]',
                'name = "trtllm-pytorch"\nprecisions = ["int4_awq", "int8_sq"]',
            ),
            "backends[1].precisions[1]",
            "int8_sq does not run on the trtllm-pytorch backend",
        ),
        (
            ("[[profiles]]", '[quantization]\nkv_cache_dtype = "int8"\n\n[[profiles]]'),
            "quantization.kv_cache_dtype",
            "a int8 KV cache does not run on the trtllm-pytorch backend",
        ),
        (
            ('name = "trtllm-pytorch"', 'name = "reference"'),
            "backends[1].name",
            "unknown backend 'reference'",
        ),
        (('name = "trtllm-pytorch"', 'name = "trtllm-engine"'), "backends[1].name", "listed twice"),
        (
            ('[target]\ngpu = "a100-40gb"', '[target]\ngpu = "a100-40gb"\nbackend = "trtllm-engine"'),
            "target.backend",
            "single-backend form",
        ),
        (
            ("[[profiles]]", '[quantization]\nprecisions = ["int8_sq"]\n\n[[profiles]]'),
            "quantization.precisions",
            "single-backend form",
        ),
        (('precisions = ["int4_awq", "int8_wo"]', "precisions = []"), "backends[1].precisions", "at least 1"),
    ],
)
def test_a_bad_backends_list_names_the_field(tmp_path, capsys, change, field, words):
    assert change[0] in BOTH
    for gpu in ("a100-40gb", "cpu"):
        path = write(tmp_path, BOTH.replace(*change, 1).replace('gpu = "a100-40gb"', f'gpu = "{gpu}"'))
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert (info.value.field, gpu) == (field, gpu) and words in info.value.problem
        assert main(["status", "--config", str(path), "--work-dir", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err
        assert f"{path}: {field}: " in " ".join(err.split()) and "Traceback" not in err


def test_a_backend_that_cannot_run_on_the_target_is_one_line_exit_2(tmp_path, capsys):
    path = write(tmp_path, VALID.replace('gpu = "a100-40gb"', 'gpu = "a100-40gb"\nbackend = "reference"'))
    assert main(["status", "--config", str(path), "--work-dir", str(tmp_path / "w")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{path}: target.backend: backend 'reference' cannot run on target 'a100-40gb'" in err
    assert "Traceback" not in err


def test_the_old_cpu_reference_target_still_loads_with_one_deprecation_line(tmp_path, capsys):
    old = write(tmp_path, VALID.replace('gpu = "a100-40gb"', 'gpu = "cpu-reference"'))
    with pytest.warns(ConfigDeprecationWarning, match='target.gpu = "cpu-reference" is deprecated'):
        config = load_config(old)
    assert (config.target.gpu, config.target.backend) == ("cpu", "reference")
    assert main(["status", "--config", str(old), "--work-dir", str(tmp_path / "w")]) == 0
    err = capsys.readouterr().err
    assert err.count("WARNING") == 1
    assert 'WARNING target.gpu = "cpu-reference" is deprecated: it means gpu = "cpu" with backend =' in err


def test_missing_config_file_is_exit_2(tmp_path, capsys):
    code = main(["status", "--config", str(tmp_path / "nope.toml")])
    assert code == 2
    assert "config file not found" in capsys.readouterr().err


def test_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\n"))


# --- every field as TOML writes it: numbers and booleans exact, strings never empty (issue 26, item 7) ---


def _leaf_fields():
    """(TOML table, key, field path in errors, annotation) of every scalar field of the config."""
    import types
    import typing

    from pipeline.facts.config import GateThresholds, PipelineConfig, Profile, Strict

    def scalar(annotation):
        if typing.get_origin(annotation) is typing.Annotated:
            return scalar(typing.get_args(annotation)[0])
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            return scalar(args[0]) if len(args) == 1 else None
        return annotation

    tables = [
        (name, f"[{name}]", name, info.annotation) for name, info in PipelineConfig.model_fields.items()
    ]
    tables = [(n, t, p, a) for n, t, p, a in tables if isinstance(a, type) and issubclass(a, Strict)]
    tables += [("profiles", "[[profiles]]", "profiles[0]", Profile)]
    tables += [("thresholds", "[gate.thresholds.int8_sq]", "gate.thresholds.int8_sq", GateThresholds)]
    for _, table, prefix, model in tables:
        for key, info in model.model_fields.items():
            yield table, key, f"{prefix}.{key}", scalar(info.annotation), info.metadata


def _with(table: str, key: str, value: str) -> str:
    """VALID with `key = value` in `table` (added, or replacing the key there)."""
    import re

    text = VALID + "\n[gate.thresholds.int8_sq]\nmax_perplexity_increase_pct = 3.0\n"
    text += "min_top1_agreement = 0.9\nmin_greedy_match = 0.5\n"
    head = text.index(table) + len(table) if table in text else None
    if head is None:
        return text + f"\n{table}\n{key} = {value}\n"
    end = text.find("\n[", head)
    end = len(text) if end == -1 else end
    body = re.sub(rf"(?m)^{key} = .*\n", "", text[head:end])
    return text[:head] + f"\n{key} = {value}" + body + text[end:]


WRONG_TYPE = {int: ['"8"', "true", "8.0"], float: ['"0.5"', "true"], bool: ["1", '"true"']}
NUMBERS_AND_BOOLEANS = [(t, k, f, a) for t, k, f, a, _ in _leaf_fields() if a in WRONG_TYPE]
STRINGS = [
    (t, k, f) for t, k, f, a, _ in _leaf_fields() if a in (str, Path) or str(a).startswith("typing.Literal")
]


@pytest.mark.parametrize(
    "table, key, field, kind", NUMBERS_AND_BOOLEANS, ids=[x[2] for x in NUMBERS_AND_BOOLEANS]
)
def test_every_number_and_boolean_takes_only_its_own_toml_type(tmp_path, table, key, field, kind):
    for value in WRONG_TYPE[kind]:
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, _with(table, key, value)))
        assert info.value.field == field, (value, info.value.message)
        assert (
            f"valid {'boolean' if kind is bool else 'integer' if kind is int else 'number'}"
            in info.value.problem
        )


def test_the_scalar_fields_are_all_found():
    """The two tests around this one cover every field: a new one is in these lists by its type."""
    fields = {f for _, _, f, _ in NUMBERS_AND_BOOLEANS}
    assert {"profiles[0].max_batch_size", "publish.decoupled", "gate.eval_samples"} <= fields
    assert {"gate.thresholds.int8_sq.min_top1_agreement", "calibration.smoothquant_alpha"} <= fields
    assert {"profiles[0].max_num_tokens", "build.workers"} <= fields  # optional ones too
    assert {"model.local_path", "model.revision", "publish.destination"} <= {f for _, _, f in STRINGS}


@pytest.mark.parametrize("table, key, field", STRINGS, ids=[x[2] for x in STRINGS])
def test_an_empty_string_is_refused_naming_its_field(tmp_path, table, key, field):
    for value in ('""', '"  "'):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, _with(table, key, value)))
        assert (info.value.field, info.value.problem) == (
            field,
            "is empty: give a value, or leave the key out for its default",
        )


def test_a_float_field_takes_a_toml_integer(tmp_path):
    config = load_config(write(tmp_path, _with("[calibration]", "smoothquant_alpha", "1")))
    assert config.calibration.smoothquant_alpha == 1.0
