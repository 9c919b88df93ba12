"""The one typed pipeline config: loaded from TOML, validated before any work.

Every error names the file and the field (`profiles[1].max_seq_len`). Relative
paths in a config file resolve against that file's folder; in the embedded
default they resolve against the working directory (the repository root).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Collection, Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic import Strict as Exact

from pipeline.core.errors import ConfigDeprecationWarning, ConfigError
from pipeline.facts.build_options import (
    GEMM_PLUGINS,
    KV_CACHE_TYPE_REASON,
    KV_CACHE_TYPES,
    gemm_plugin_problem,
)
from pipeline.facts.container import SERVING_CONTAINER
from pipeline.facts.formats import FORMATS, SELECTABLE_KV_CACHES, Precision
from pipeline.facts.targets import LEGACY_CPU_TARGET, TARGETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "tiny.toml"
# The profile of each precision's gate engine: built with --gather_context_logits for the gate to
# score, never published (see PipelineConfig.gate_profile).
GATE_PROFILE = "gate"
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _one_of(value: str, known: Mapping[str, object], what: str) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} '{value}'; known: {', '.join(known)}")
    return value


# TOML has its own integers, floats and booleans: a value of another type (`max_batch_size = "8"`,
# `= true`) is a mistake to name, never to convert. A float field takes an integer (`= 1`).
Int = Annotated[int, Exact()]
Float = Annotated[float, Exact()]
Bool = Annotated[bool, Exact()]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # Caught here, not later: Path("") is "." (the config's own folder), revision "" fails a download.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty: give a value, or leave the key out for its default")
        return value


class ModelSection(Strict):
    name: Annotated[str, Field(pattern=SLUG.pattern)]  # used in paths: engines/<name>/...
    # hub: download repo_id@revision; local: a Hugging Face folder on disk;
    # tiny: the small Mistral this project generates itself (demo, CI).
    source: Literal["hub", "local", "tiny"] = "hub"
    repo_id: str | None = None
    revision: str = "main"
    local_path: Path | None = None
    allow_patterns: tuple[str, ...] = (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "chat_template.jinja",
        "*.safetensors",
        "model.safetensors.index.json",
    )
    allow_pickle: Bool = False  # refuse .bin/.pt/.pth weights unless opted in
    trust_remote_code: Bool = False
    instruct: Bool = False  # apply the tokenizer's chat template to calibration/eval prompts
    tiny_seed: Int = 0
    tiny_train_steps: Annotated[Int, Field(ge=0)] = 300
    tiny_size: str = "demo"  # a name in pipeline.hub.tiny_model.TINY_SIZES

    @model_validator(mode="after")
    def _source_fields(self) -> ModelSection:
        if self.source == "hub" and not self.repo_id:
            raise ValueError("source 'hub' needs repo_id (e.g. 'mistralai/Mistral-7B-Instruct-v0.3')")
        if self.source == "local" and self.local_path is None:
            raise ValueError("source 'local' needs local_path (a Hugging Face model folder)")
        return self

    @field_validator("tiny_size")
    @classmethod
    def _known_tiny_size(cls, value: str) -> str:
        from pipeline.hub.tiny_model import TINY_SIZES

        return _one_of(value, TINY_SIZES, "tiny size")

    @property
    def revision_is_commit(self) -> bool:
        return bool(COMMIT_SHA.match(self.revision))


class TargetSection(Strict):
    """Which hardware (`gpu`: a GPU, or "cpu"). `backend` is the old single-backend form's runtime (with
    quantization.precisions); a config now lists its backends in [[backends]]."""

    gpu: str = "a100-40gb"
    backend: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_cpu(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("gpu") == LEGACY_CPU_TARGET:
            warnings.warn(
                f'target.gpu = "{LEGACY_CPU_TARGET}" is deprecated: it means gpu = "cpu" with '
                'backend = "reference"; write those two',
                ConfigDeprecationWarning,
                stacklevel=2,
            )
            data = {**data, "gpu": "cpu", "backend": data.get("backend", "reference")}
        return data

    @field_validator("gpu")
    @classmethod
    def _known(cls, value: str) -> str:
        return _one_of(value, TARGETS, "target")

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from pipeline.backends import BACKENDS

        return _one_of(value, BACKENDS, "backend")

    @model_validator(mode="after")
    def _runs_there(self) -> TargetSection:
        if self.backend is None:
            return self
        from pipeline.backends import BACKENDS

        target = TARGETS[self.gpu]
        problem = BACKENDS[self.backend].unavailable_on(target)
        if problem is not None:
            here = " or ".join(repr(b.name) for b in BACKENDS.values() if b.unavailable_on(target) is None)
            raise _FieldError(
                "target.backend",
                f"backend '{self.backend}' cannot run on target '{self.gpu}': {problem}",
                f"use {here} on '{self.gpu}', or leave backend out (the target's default)",
            )
        return self


class BackendSection(Strict):
    """One runtime's precisions: `name` is the GPU runtime the artifacts are for (on the cpu target the
    reference runtime plays it, pipeline.backends)."""

    name: str
    precisions: Annotated[tuple[Precision, ...], Field(min_length=1)]

    @field_validator("name")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from pipeline.backends import PLAYED

        if value not in PLAYED:
            raise ValueError(
                f"unknown backend '{value}'; known: {', '.join(PLAYED)} (on target 'cpu' the reference "
                "runtime plays each)"
            )
        return value


class QuantizationSection(Strict):
    # The old single-backend form (with target.backend); a config now lists them in [[backends]].
    precisions: Annotated[tuple[Precision, ...], Field(min_length=1)] | None = None
    # The fp8 precision always has an FP8 KV cache (pipeline.facts.formats); this sets the others'.
    kv_cache_dtype: Literal[SELECTABLE_KV_CACHES] = "fp16"


class CalibrationSection(Strict):
    dataset: Path = Path("calib_data/offline-mix.jsonl")
    samples: Annotated[Int, Field(ge=1)] = 512
    seq_len: Annotated[Int, Field(ge=8)] = 512
    batch_size: Annotated[Int, Field(ge=1)] = 8
    smoothquant_alpha: Annotated[Float, Field(ge=0.0, le=1.0)] = 0.5
    seed: Int = 1234


class Profile(Strict):
    name: Annotated[str, Field(pattern=SLUG.pattern)]
    max_batch_size: Annotated[Int, Field(ge=1)]
    max_input_len: Annotated[Int, Field(ge=1)]
    # Always explicit: left unset, TensorRT-LLM takes 32768 from Mistral's config.
    max_seq_len: Annotated[Int, Field(ge=2)]
    max_num_tokens: Annotated[Int, Field(ge=1)] | None = None  # None: derived by the plan
    opt_num_tokens: Annotated[Int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _lengths(self) -> Profile:
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be less than max_seq_len ({self.max_seq_len})"
            )
        return self


class BuildSection(Strict):
    # Checked against the target by PipelineConfig (fp8 needs sm89, nvfp4 sm100).
    gemm_plugin: str = "auto"
    multiple_profiles: Bool = True
    use_paged_context_fmha: Bool = True
    kv_cache_type: str = "paged"
    workers: Annotated[Int, Field(ge=1)] | None = None  # None: one per visible GPU
    visualize: Bool = False

    @field_validator("gemm_plugin")
    @classmethod
    def _known_gemm_plugin(cls, value: str) -> str:
        return _one_of(value, GEMM_PLUGINS, "gemm_plugin")

    @field_validator("kv_cache_type")
    @classmethod
    def _served_kv_cache(cls, value: str) -> str:
        if value not in KV_CACHE_TYPES:
            raise ValueError(
                f"'{value}' cannot be served: {KV_CACHE_TYPE_REASON}; use {' or '.join(map(repr, KV_CACHE_TYPES))}"
            )
        return value


class GateThresholds(Strict):
    max_perplexity_increase_pct: Annotated[Float, Field(ge=0)]
    min_top1_agreement: Annotated[Float, Field(ge=0, le=1)]
    min_greedy_match: Annotated[Float, Field(ge=0, le=1)]
    min_multiple_choice_accuracy: Annotated[Float, Field(ge=0, le=1)] | None = None
    # gate.tasks: candidate score / unquantized score at least this (None: the format's default,
    # pipeline.facts.formats), and, when set, at most this many points (score x 100) lost.
    min_task_recovery: Annotated[Float, Field(ge=0, le=1)] | None = None
    max_task_drop_points: Annotated[Float, Field(ge=0)] | None = None


class GateTask(Strict):
    """One lm-evaluation-harness task (or group, e.g. mmlu) both models are scored on."""

    name: Annotated[str, Field(min_length=1)]
    num_fewshot: Annotated[Int, Field(ge=0)] | None = None  # None: the task's own
    limit: Annotated[Int, Field(ge=1)] | None = None  # items per task (each of a group's); None: all
    # The hub data set's commit: the task's data is part of the gate's key. Tasks of gate.task_dir
    # (JSONL files beside their YAML) have none: their files' sha256 are keyed instead.
    revision: Annotated[str, Field(pattern=COMMIT_SHA.pattern)] | None = None
    # lm-eval's result key "<metric>,<filter>" (e.g. "exact_match,strict-match"); None: the task's first.
    metric: str | None = None


def _default_thresholds() -> dict[Precision, GateThresholds]:
    # Each format's defaults and the reason for them sit in its row of pipeline.facts.formats.
    return {
        precision: GateThresholds(
            max_perplexity_increase_pct=fmt.gate.max_perplexity_increase_pct,
            min_top1_agreement=fmt.gate.min_top1_agreement,
            min_greedy_match=fmt.gate.min_greedy_match,
            min_task_recovery=fmt.gate.min_task_recovery,
        )
        for precision, fmt in FORMATS.items()
    }


class GateSection(Strict):
    eval_dataset: Path = Path("calib_data/offline-eval.jsonl")
    eval_samples: Annotated[Int, Field(ge=1)] = 64
    eval_seq_len: Annotated[Int, Field(ge=8)] = 512
    prompts: Path = Path("calib_data/prompts.jsonl")
    max_new_tokens: Annotated[Int, Field(ge=1)] = 32
    multiple_choice: Path | None = None
    thresholds: dict[Precision, GateThresholds] = Field(default_factory=_default_thresholds)
    # Sequences scored at once, whatever the served engines' max_batch_size: the gate engine's batch.
    batch_size: Annotated[Int, Field(ge=1)] = 8
    # Each served engine against its precision's gate engine (same checkpoint): greedy agreement.
    min_served_greedy_match: Annotated[Float, Field(ge=0, le=1)] = 0.9
    # Task accuracy, the gate engine against the unquantized model (lm-evaluation-harness).
    tasks: tuple[GateTask, ...] = ()
    task_dir: Path | None = None  # a folder of the project's own task YAMLs (lm-eval's include path)

    @model_validator(mode="after")
    def _tasks_once(self) -> GateSection:
        names = [t.name for t in self.tasks]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _FieldError(f"gate.tasks[{i}].name", f"task '{name}' is listed twice")
        return self

    def min_task_recovery(self, precision: Precision) -> float:
        configured = self.thresholds[precision].min_task_recovery
        return FORMATS[precision].gate.min_task_recovery if configured is None else configured


class PublishSection(Strict):
    destination: Path = Path("model_repository")
    container: str = SERVING_CONTAINER.tag
    decoupled: Bool = True
    max_queue_delay_microseconds: Annotated[Int, Field(ge=0)] = 100
    preprocessing_instances: Annotated[Int, Field(ge=1)] = 1
    postprocessing_instances: Annotated[Int, Field(ge=1)] = 1
    enable_kv_cache_reuse: Bool = False
    enable_chunked_context: Bool = True
    # Where the serving container sees a published version (`-v <slot>/current:/models`):
    # the TensorRT-LLM backend reads the engine from an absolute gpt_model_path.
    mount_path: Annotated[str, Field(pattern=r"^/")] = "/models"


class ExecutionSection(Strict):
    """Where the tasks run; never part of an artifact's key (both executors make the same bytes)."""

    # local: one task at a time in this process. ray: every ready task at once on a Ray cluster,
    # each on a node with what it needs (pipeline.execution.resources).
    executor: Literal["local", "ray"] = "local"
    # ray.init's address: "auto" (the cluster this host belongs to, or RAY_ADDRESS), "<head>:6379",
    # or "ray://<head>:10001" (Ray Client).
    ray_address: Annotated[str, Field(min_length=1)] = "auto"


class PipelineConfig(Strict):
    model: ModelSection
    target: TargetSection = TargetSection()
    # Each backend with its precisions; left out, the single-backend form (target.backend and
    # quantization.precisions, or the target's default backend with int8_sq) fills it.
    backends: tuple[BackendSection, ...] = ()
    quantization: QuantizationSection = QuantizationSection()
    calibration: CalibrationSection = CalibrationSection()
    profiles: Annotated[tuple[Profile, ...], Field(min_length=1)]
    build: BuildSection = BuildSection()
    gate: GateSection = GateSection()
    publish: PublishSection = PublishSection()
    execution: ExecutionSection = ExecutionSection()
    # The file it was read from, for errors found after loading (a profile that does not fit).
    _source: str = PrivateAttr(default="<config>")

    @property
    def source(self) -> str:
        return self._source

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: Any) -> Any:
        """[[backends]] or the single-backend form, never both: which precisions go where would be a guess."""
        if not isinstance(data, dict) or "backends" not in data:
            return data
        for section, key in (("target", "backend"), ("quantization", "precisions")):
            if isinstance(data.get(section), dict) and key in data[section]:
                raise _FieldError(
                    f"{section}.{key}",
                    "is the single-backend form, and this config lists [[backends]]",
                    "remove it: each [[backends]] entry names its backend and its precisions",
                )
        return data

    @model_validator(mode="after")
    def _combinations(self) -> PipelineConfig:
        from pipeline.backends import BACKENDS, default_backend, runtime_for

        target = TARGETS[self.target.gpu]
        single = not self.backends
        if single:
            runtime = BACKENDS[self.target.backend] if self.target.backend else default_backend(target)
            precisions = self.quantization.precisions or (Precision.int8_sq,)
            # The model is frozen; this fills the field once, while it is validated.
            object.__setattr__(self, "backends", (BackendSection(name=runtime.plays, precisions=precisions),))
        kv_cache_dtype = self.quantization.kv_cache_dtype
        names = [b.name for b in self.backends]
        for b, entry in enumerate(self.backends):
            if names.index(entry.name) != b:
                raise _FieldError(f"backends[{b}].name", f"backend '{entry.name}' is listed twice")
            field = "quantization.precisions" if single else f"backends[{b}].precisions"
            backend = runtime_for(entry.name, target)
            for i, precision in enumerate(entry.precisions):
                gap = backend.format_problem(precision, kv_cache_dtype, target)
                if gap is None:
                    continue
                if gap.part == "kv_cache":
                    raise _FieldError(
                        "quantization.kv_cache_dtype", gap.problem, 'use kv_cache_dtype = "fp16"'
                    )
                runs = [
                    p.value for p in Precision if backend.format_problem(p, kv_cache_dtype, target) is None
                ]
                raise _FieldError(
                    f"{field}[{i}]",
                    gap.problem,
                    f"{entry.name} runs {', '.join(runs)} on '{target.name}'",
                )
            if len(set(entry.precisions)) != len(entry.precisions):
                raise _FieldError(field, "lists a precision twice")
        names = [p.name for p in self.profiles]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise _FieldError(f"profiles[{i}].name", f"profile name '{name}' is used twice")
            if name == GATE_PROFILE:
                raise _FieldError(
                    f"profiles[{i}].name",
                    f"'{GATE_PROFILE}' names the gate's own engine",
                    "rename the profile",
                )
        for i, profile in enumerate(self.profiles):
            if profile.opt_num_tokens is not None and self.build.multiple_profiles:
                # trtllm-build raises on --multiple_profiles enable with --opt_num_tokens.
                raise _FieldError(
                    f"profiles[{i}].opt_num_tokens",
                    "cannot be set with build.multiple_profiles = true (trtllm-build refuses the pair)",
                )
        problem = gemm_plugin_problem(self.build.gemm_plugin, target.sm)
        if problem is not None:
            raise _FieldError(
                "build.gemm_plugin",
                f"{problem}; target '{target.name}' is sm{target.sm}",
                "use 'auto' (the checkpoint's dtype)",
            )
        for precision in dict.fromkeys(p for entry in self.backends for p in entry.precisions):
            if precision not in self.gate.thresholds:
                raise _FieldError("gate.thresholds", f"no thresholds for precision '{precision.value}'")
        return self

    @property
    def variants(self) -> list[tuple[str, Precision]]:
        """Every (backend, precision) the config builds, in the config's order."""
        return [(entry.name, precision) for entry in self.backends for precision in entry.precisions]

    def published_variants(
        self,
        backends: Collection[str] | None = None,
        precisions: Collection[str] | None = None,
        profiles: Collection[str] | None = None,
    ) -> list[tuple[str, str, str]]:
        """(backend, precision, profile) of every variant publish releases that the filters (empty: any)
        select, in the config's order."""
        return [
            (backend, precision.value, profile.name)
            for backend, precision in self.variants
            for profile in self.profiles
            if (not backends or backend in backends)
            and (not precisions or precision.value in precisions)
            and (not profiles or profile.name in profiles)
        ]

    def profile(self, name: str) -> Profile:
        if name == GATE_PROFILE:
            return self.gate_profile
        return next(p for p in self.profiles if p.name == name)

    @property
    def gate_profile(self) -> Profile:
        """The gate engine's shape: gate.batch_size windows of eval_seq_len tokens, prompts continued
        by max_new_tokens."""
        gate = self.gate
        return Profile(
            name=GATE_PROFILE,
            max_batch_size=gate.batch_size,
            max_input_len=gate.eval_seq_len,
            max_seq_len=gate.eval_seq_len + gate.max_new_tokens,
        )


class _FieldError(ValueError):
    """Raised inside validators so the loader can name the exact field."""

    def __init__(self, field: str, problem: str, hint: str | None = None) -> None:
        super().__init__(problem)
        self.field = field
        self.problem = problem
        self.hint = hint


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    return config.model_copy(
        update={
            "model": config.model.model_copy(update={"local_path": fix(config.model.local_path)}),
            "calibration": config.calibration.model_copy(update={"dataset": fix(config.calibration.dataset)}),
            "gate": config.gate.model_copy(
                update={
                    "eval_dataset": fix(config.gate.eval_dataset),
                    "prompts": fix(config.gate.prompts),
                    "multiple_choice": fix(config.gate.multiple_choice),
                    "task_dir": fix(config.gate.task_dir),
                }
            ),
            "publish": config.publish.model_copy(update={"destination": fix(config.publish.destination)}),
        }
    )


def parse_config(text: str, source: str, base_dir: Path) -> PipelineConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from exc
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            raise ConfigError(source, ctx_error.field, ctx_error.problem, hint=ctx_error.hint) from None
        problem = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            problem = "unknown key (check the spelling against the README's config reference)"
        elif err["type"] == "missing":
            problem = "required but missing"
        raise ConfigError(source, _loc(err["loc"]), problem) from None
    config = _resolve_paths(config, base_dir)
    config._source = source
    return config


def load_config(path: Path | None) -> PipelineConfig:
    """Load `path`, or the embedded tiny CPU default when `path` is None."""
    if path is None:
        text = resources.files("pipeline.defaults").joinpath(DEFAULT_CONFIG_NAME).read_text()
        return parse_config(text, f"<embedded default {DEFAULT_CONFIG_NAME}>", Path.cwd())
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            path,
            "",
            f"not UTF-8 text (byte {exc.start}): is it a TOML file?",
            hint="pass --config PATH to a TOML file",
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            path, "", "is a folder, not a TOML file", hint="pass --config PATH to a TOML file"
        ) from None
    except FileNotFoundError:
        raise ConfigError(
            path, "", "config file not found", hint="pass --config PATH to a TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read config: {exc.strerror}") from None
    return parse_config(text, str(path), path.resolve().parent)


def input_file_problems(config: PipelineConfig, stages: set[str]) -> list[tuple[str, str]]:
    """(field, problem) for each data file the given stages will read that is not a readable file.

    Checked before any stage runs, so a typo fails in a second rather than after a download.
    """
    from pipeline.core.paths import dir_problem, file_problem

    needed: list[tuple[str, Path | None]] = []
    if "calibrate" in stages:
        needed.append(("calibration.dataset", config.calibration.dataset))
    if "gate" in stages:
        needed += [
            ("gate.eval_dataset", config.gate.eval_dataset),
            ("gate.prompts", config.gate.prompts),
            ("gate.multiple_choice", config.gate.multiple_choice),
        ]
    problems = [(field, file_problem(path)) for field, path in needed if path is not None]
    if "gate" in stages and config.gate.tasks and config.gate.task_dir is not None:
        task_dir = config.gate.task_dir
        problems.append(("gate.task_dir", None if task_dir.is_dir() else f"not a folder: {task_dir}"))
    if "fetch" in stages and config.model.source == "local" and config.model.local_path is not None:
        path = config.model.local_path
        problems.append(("model.local_path", None if path.is_dir() else f"not a folder: {path}"))
    if "publish" in stages:
        problems.append(("publish.destination", dir_problem(config.publish.destination)))
    return [(field, problem) for field, problem in problems if problem is not None]
