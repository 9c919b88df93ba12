"""The memory and speed plan: pure arithmetic over a model's architecture, a target and a profile.

Every figure carries the formula that produced it (`PlanLine.how`), so
`trtllm-pipeline plan` can show its working. The formulas:

- weights = linear params x bits per weight / 8 (16 FP16/BF16, 8 INT8/FP8, 4 INT4)
  + the format's scales (one FP32 per output channel for INT8; one FP16 per group of 128
  inputs per output channel plus one FP16 pre-quant scale per input channel for INT4 AWQ;
  two FP32 per linear for FP8)
  + embedding, lm_head and norms in FP16 (ModelOpt keeps them unquantized);
- KV cache per token = 2 (K and V) x layers x kv_heads x head_dim x bytes (2 FP16, 1 INT8/FP8);
- headroom = GPU memory - weights;
- allowance (activations and workspace) = a fixed runtime reserve (CUDA context, cuBLAS and
  TensorRT-LLM runtime buffers) + the gated MLP's live activations at max_num_tokens
  (T x (3 x ffn + 2 x hidden) x 2 B); a gate engine (built with --gather_context_logits, never
  served) adds its context logits: the engine's output (T x vocab x 4 B, FP32) and the runner's
  padded copy (batch x max_input_len x vocab x 4 B). Served engines gather none;
- KV budget = 0.9 x (headroom - allowance): TensorRT-LLM's runtime gives the KV cache
  `free_gpu_memory_fraction` = 0.9 of what is free after loading the engine;
- largest batch at max_seq_len = floor(KV budget / (KV per token x max_seq_len));
- batch-1 decode ceiling = memory bandwidth / bytes read per generated token, where a token
  reads every weight once (the embedding table only one row) plus the KV cache of its context.

For Mistral 7B v0.3 in INT8 on an A100 40GB this gives 7.0 GiB of weights and 33.0 GiB of
headroom, as the published estimate does (its "about 7 GB", "33 GB"). Each format's bits, group
size and scale bytes come from its row in pipeline.facts.formats; so does the builder's rule that an
INT8 KV cache turns paged context FMHA (and with it chunked context) off.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from pipeline.core.errors import ConfigError, InputError
from pipeline.facts.architecture import HF_CONFIG, KNOWN_ARCHITECTURES, Architecture
from pipeline.facts.config import GATE_PROFILE, PipelineConfig, Precision, Profile
from pipeline.facts.formats import WeightFormat, builds_paged_context_fmha, kv_cache_format, weight_format
from pipeline.facts.targets import TARGETS, Target

if TYPE_CHECKING:
    from pipeline.backends.base import Backend

GIB = 1024**3
KV_FREE_FRACTION = 0.9  # TensorRT-LLM KvCacheConfig.free_gpu_memory_fraction's default
RUNTIME_RESERVE_BYTES = 1 * GIB  # CUDA context, cuBLAS workspaces, TensorRT-LLM runtime buffers
DEFAULT_MAX_NUM_TOKENS = 8192  # TensorRT-LLM BuildConfig.max_num_tokens's default
ACTIVATION_BYTES = 2  # FP16 activations
LOGITS_BYTES = 4  # context logits are FP32 (PretrainedConfig.logits_dtype)
UNQUANTIZED_BYTES = 2  # embedding, lm_head, norms stay FP16


def find_architecture(config: PipelineConfig, fetched_model_dir: Path | None = None) -> Architecture:
    """The model's architecture: the fetched config.json, a local one, the tiny spec, or the built-in table."""
    model = config.model
    for folder in (fetched_model_dir, model.local_path if model.source == "local" else None):
        if folder is not None and (folder / HF_CONFIG).is_file():
            return Architecture.load(folder)
    if model.source == "tiny":
        from pipeline.hub.tiny_model import tiny_spec

        return tiny_spec(model.tiny_size, seed=model.tiny_seed, train_steps=model.tiny_train_steps).arch
    if model.repo_id in KNOWN_ARCHITECTURES:
        return KNOWN_ARCHITECTURES[model.repo_id]
    raise InputError(
        f"the architecture of '{model.repo_id or model.local_path}' is not known before it is fetched",
        hint="run `trtllm-pipeline fetch` first; the plan then reads the downloaded config.json",
    )


class PlanLine(BaseModel):
    model_config = ConfigDict(frozen=True)
    figure: str
    value: str
    how: str


class ProfilePlan(BaseModel):
    """The plan of one (target, backend, precision, profile): what fits, and how each figure was obtained."""

    model_config = ConfigDict(frozen=True)
    target: str
    backend: str  # the config [[backends]] name it is for (the runtime on the target plays it)
    precision: str
    kv_cache_dtype: str
    profile: str
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    gather_context_logits: bool  # a gate engine: the gate reads its context logits
    params: int
    weight_bytes: int
    kv_bytes_per_token: int
    paged_context_fmha: bool  # what trtllm-build builds (off with an INT8 KV cache): chunked context
    headroom_bytes: int
    allowance_bytes: int
    kv_budget_bytes: int
    kv_needed_bytes: int
    largest_batch: int  # at this profile's max_seq_len
    largest_seq_len: int  # at this profile's max_batch_size
    decode_ceiling_tok_s: float  # batch 1, short context
    decode_ceiling_at_max_seq_tok_s: float  # batch 1, context of max_seq_len tokens
    fits: bool
    problem: str | None = None
    derivation: tuple[PlanLine, ...]


def derive_max_num_tokens(profile: Profile, *, paged_context_fmha: bool) -> tuple[int, str]:
    """max_num_tokens and why: the config's, else TensorRT-LLM's 8192 capped by what one step can hold."""
    if profile.max_num_tokens is not None:
        return profile.max_num_tokens, "set in the config"
    most = profile.max_batch_size * profile.max_input_len
    value = min(DEFAULT_MAX_NUM_TOKENS, most)
    how = f"min({DEFAULT_MAX_NUM_TOKENS}, max_batch_size x max_input_len = {most:,})"
    if not paged_context_fmha and value < profile.max_input_len:
        # Without paged context FMHA there is no chunked context: a whole prompt must fit one step.
        return (
            profile.max_input_len,
            how + f", raised to max_input_len {profile.max_input_len} (no chunked context)",
        )
    return value, how


def scale_bytes(arch: Architecture, fmt: WeightFormat) -> tuple[int, str]:
    """Bytes of the quantized linears' scales in the engine, and how."""
    if not fmt.quantized:
        return 0, ""
    layers, size = arch.num_hidden_layers, fmt.scale_bytes
    if fmt.group_size is not None:
        groups = arch.linear_params // fmt.group_size
        prequant = arch.linear_in_channels_per_layer * layers
        total = (groups + prequant) * size
        return total, (
            f"{arch.linear_params:,} / {fmt.group_size} x {size} B group scales + {prequant:,} x {size} B "
            "pre-quant scales"
        )
    if fmt.layout is not None and fmt.layout.weight_scale == "tensor":
        count = len(arch.linears) * layers * (2 if fmt.layout.activation_scale else 1)
        return count * size, f"{count} x {size} B per-tensor scales"
    channels = arch.linear_out_channels_per_layer * layers
    return channels * size, f"{channels:,} x {size} B per-channel scales"


def bytes_read_per_token(arch: Architecture, weight_bytes: int) -> int:
    """What generating one token reads besides its KV cache: every weight once, but of the
    embedding table only the token's own row. The decode ceilings divide bandwidth by it."""
    return weight_bytes - arch.embedding_params * UNQUANTIZED_BYTES + arch.hidden_size * UNQUANTIZED_BYTES


def format_bytes(n: float) -> str:
    """GiB with two decimals; MiB below a tenth of a GiB (the tiny model's figures)."""
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB / 10 else f"{n / 1024**2:.2f} MiB"


def plan_memory(
    arch: Architecture,
    precision: Precision,
    kv_cache_dtype: str,
    target: Target,
    profile: Profile,
    *,
    paged_context_fmha: bool = True,
    gather_context_logits: bool = False,
    backend: Backend | None = None,
) -> ProfilePlan:
    """The plan of one profile. Pure: no IO, no refusal (see `require_fit`).

    paged_context_fmha is what the config asks for; the plan applies the builder's rules to it.
    backend is the runtime on the target (None: the target's default), which says whether it runs
    the format there.
    """
    if backend is None:
        # The backends build on the plan: their registry is read when a plan is made.
        from pipeline.backends import default_backend

        backend = default_backend(target)
    fmt = weight_format(precision)
    kv = kv_cache_format(precision, kv_cache_dtype)
    paged_context_fmha = builds_paged_context_fmha(paged_context_fmha, kv)
    scales, scales_how = scale_bytes(arch, fmt)
    linear_bytes = arch.linear_params * fmt.weight_bits // 8
    weights = linear_bytes + scales + arch.unquantized_params * UNQUANTIZED_BYTES
    kv_per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * kv.bytes_per_value
    memory = int(target.memory_gib * GIB)
    headroom = memory - weights
    tokens, tokens_how = derive_max_num_tokens(profile, paged_context_fmha=paged_context_fmha)
    activations = tokens * (3 * arch.intermediate_size + 2 * arch.hidden_size) * ACTIVATION_BYTES
    logits_rows = tokens + profile.max_batch_size * profile.max_input_len if gather_context_logits else 0
    logits = logits_rows * arch.vocab_size * LOGITS_BYTES
    allowance = RUNTIME_RESERVE_BYTES + activations + logits
    budget = max(0, int(KV_FREE_FRACTION * (headroom - allowance)))
    needed = kv_per_token * profile.max_batch_size * profile.max_seq_len
    largest_batch = budget // (kv_per_token * profile.max_seq_len)
    largest_seq = budget // (kv_per_token * profile.max_batch_size)
    read_per_token = bytes_read_per_token(arch, weights)
    bandwidth = target.bandwidth_gb_s * 1e9
    ceiling = bandwidth / read_per_token
    ceiling_long = bandwidth / (read_per_token + kv_per_token * profile.max_seq_len)

    unsupported = backend.format_problem(precision, kv_cache_dtype, target)
    problem = None
    if unsupported is not None:
        problem = unsupported.problem
    elif headroom <= allowance:
        problem = (
            f"weights ({format_bytes(weights)}) and the activation allowance ({format_bytes(allowance)}) "
            f"exceed {target.name}'s {target.memory_gib:g} GiB"
        )
    elif needed > budget:
        problem = (
            f"needs {format_bytes(needed)} of KV cache for {profile.max_batch_size} x {profile.max_seq_len} tokens, "
            f"{format_bytes(budget)} available; largest batch at max_seq_len {profile.max_seq_len}: {largest_batch}, "
            f"largest max_seq_len at batch {profile.max_batch_size}: {largest_seq}"
        )
    elif not paged_context_fmha and tokens < profile.max_input_len:
        problem = (
            f"max_num_tokens ({tokens}) < max_input_len ({profile.max_input_len}) needs chunked context, "
            + (
                "which needs build.use_paged_context_fmha = true"
                if kv.keeps_paged_context_fmha
                else f"which trtllm-build turns off with a {kv.name} KV cache: set max_num_tokens >= max_input_len"
            )
        )

    h, f, v, layers = arch.hidden_size, arch.intermediate_size, arch.vocab_size, arch.num_hidden_layers
    lines = (
        PlanLine(
            figure="parameters",
            value=f"{arch.params / 1e9:.3f} B",
            how=(
                f"{arch.linear_params:,} in linears ({layers} layers of qkv, dense, fc, gate, proj) + "
                f"{arch.unquantized_params:,} in embedding, lm_head and norms (from {arch.source})"
            ),
        ),
        PlanLine(
            figure="weights",
            value=format_bytes(weights),
            how=(
                f"{arch.linear_params:,} x {fmt.weight_bits} bits ({precision.value} linears)"
                + (f" + {scales_how} ({scales:,} B)" if scales else "")
                + f" + {arch.unquantized_params:,} x {UNQUANTIZED_BYTES} B (FP16 embedding, lm_head, norms)"
                + f" = {weights:,} B"
            ),
        ),
        PlanLine(
            figure="KV cache per token",
            value=f"{kv_per_token / 1024:g} KiB",
            how=(
                f"2 x {layers} layers x {arch.num_key_value_heads} kv_heads x {arch.head_dim} head_dim x "
                f"{kv.bytes_per_value} B ({kv.name}) = {kv_per_token:,} B"
            ),
        ),
        PlanLine(
            figure="headroom",
            value=format_bytes(headroom),
            how=f"{target.memory_gib:g} GiB ({target.name}) - {format_bytes(weights)} weights",
        ),
        PlanLine(
            figure="chunked context (paged context FMHA)",
            value="on" if paged_context_fmha else "off",
            how=(
                "build.use_paged_context_fmha"
                if kv.keeps_paged_context_fmha
                else f"off with a {kv.name} KV cache: trtllm-build switches paged context FMHA off, so a "
                "prompt must fit max_num_tokens and Triton's enable_chunked_context is false"
            ),
        ),
        PlanLine(figure="max_num_tokens", value=str(tokens), how=tokens_how),
        PlanLine(
            figure="activation/workspace allowance",
            value=format_bytes(allowance),
            how=(
                f"{format_bytes(RUNTIME_RESERVE_BYTES)} runtime reserve + {tokens} x (3 x {f} + 2 x {h}) x "
                f"{ACTIVATION_BYTES} B MLP activations"
                + (
                    f" + ({tokens} + {profile.max_batch_size} x {profile.max_input_len}) x {v} x {LOGITS_BYTES} B "
                    "context logits (the engine's, and the runner's padded copy)"
                    if gather_context_logits
                    else " (no context logits: a served engine does not gather them)"
                )
            ),
        ),
        PlanLine(
            figure="KV cache budget",
            value=format_bytes(budget),
            how=f"{KV_FREE_FRACTION} x ({format_bytes(headroom)} headroom - {format_bytes(allowance)} allowance)",
        ),
        PlanLine(
            figure=f"largest batch at max_seq_len {profile.max_seq_len}",
            value=str(largest_batch),
            how=f"floor({format_bytes(budget)} / ({kv_per_token:,} B x {profile.max_seq_len}))",
        ),
        PlanLine(
            figure=f"KV cache for batch {profile.max_batch_size}",
            value=format_bytes(needed),
            how=f"{kv_per_token:,} B x {profile.max_batch_size} x {profile.max_seq_len}",
        ),
        PlanLine(
            figure="batch-1 decode ceiling",
            value=f"{ceiling:.0f} tok/s ({ceiling_long:.0f} at {profile.max_seq_len} tokens of context)",
            how=(
                f"{target.bandwidth_gb_s:g} GB/s / {read_per_token:,} B read per token (weights, one embedding "
                f"row); + {kv_per_token:,} B x {profile.max_seq_len} KV at full context"
            ),
        ),
    )
    return ProfilePlan(
        target=target.name,
        backend=backend.plays,
        precision=precision.value,
        kv_cache_dtype=kv.name,
        profile=profile.name,
        max_batch_size=profile.max_batch_size,
        max_input_len=profile.max_input_len,
        max_seq_len=profile.max_seq_len,
        max_num_tokens=tokens,
        gather_context_logits=gather_context_logits,
        params=arch.params,
        weight_bytes=weights,
        kv_bytes_per_token=kv_per_token,
        paged_context_fmha=paged_context_fmha,
        headroom_bytes=headroom,
        allowance_bytes=allowance,
        kv_budget_bytes=budget,
        kv_needed_bytes=needed,
        largest_batch=largest_batch,
        largest_seq_len=largest_seq,
        decode_ceiling_tok_s=round(ceiling, 1),
        decode_ceiling_at_max_seq_tok_s=round(ceiling_long, 1),
        fits=problem is None,
        problem=problem,
        derivation=lines,
    )


def _plan(
    config: PipelineConfig, arch: Architecture, target: Target, backend: str, precision: Precision, name: str
) -> ProfilePlan:
    from pipeline.backends import runtime_for

    return plan_memory(
        arch,
        precision,
        config.quantization.kv_cache_dtype,
        target,
        config.profile(name),
        paged_context_fmha=config.build.use_paged_context_fmha,
        # Only the gate's own engine gathers context logits (they cost memory and copying per response).
        gather_context_logits=name == GATE_PROFILE,
        backend=runtime_for(backend, target),
    )


def plan_config(
    config: PipelineConfig, arch: Architecture, targets: tuple[str, ...] = ()
) -> list[ProfilePlan]:
    """Every (target, backend, precision, profile) plan, the gate engine's included; targets default to
    the config's own."""
    return [
        _plan(config, arch, TARGETS[name], backend, precision, profile)
        for name in targets or (config.target.gpu,)
        for backend, precision in config.variants
        for profile in (*(p.name for p in config.profiles), GATE_PROFILE)
    ]


def plan_profile(
    config: PipelineConfig, arch: Architecture, backend: str, precision: Precision, profile_name: str
) -> ProfilePlan:
    """The plan of one build task (its backend, precision, profile) on the config's target, refusing a
    profile that does not fit."""
    plan = _plan(config, arch, TARGETS[config.target.gpu], backend, precision, profile_name)
    if not plan.fits:
        raise fit_error(config, plan)
    return plan


def fit_error(config: PipelineConfig, plan: ProfilePlan) -> ConfigError:
    """A plan that does not fit, as the config field to change: its profile, or the gate's batch."""
    names = [p.name for p in config.profiles]
    field = f"profiles[{names.index(plan.profile)}]" if plan.profile in names else "gate.batch_size"
    return ConfigError(
        config.source,
        field,
        f"'{plan.profile}' does not fit {plan.target} with {plan.backend} {plan.precision}: {plan.problem}",
        hint="lower max_batch_size or max_seq_len (see `trtllm-pipeline plan`), or use a larger target"
        if plan.profile in names
        else "lower gate.batch_size or gate.eval_seq_len (see `trtllm-pipeline plan`)",
    )
