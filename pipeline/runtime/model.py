"""ReferenceModel: a Llama/Mistral TensorRT-LLM checkpoint run by PyTorch on the CPU.

The forward pass is TensorRT-LLM's LLaMAForCausalLM: embedding; per layer
RMSNorm -> fused QKV -> RoPE (GPT-NeoX halves, the checkpoint's rotary_base)
-> causal GQA attention -> dense, residual, RMSNorm -> gated MLP
(proj(silu(fc(x)) * gate(x))), residual; final RMSNorm; lm_head. Batched
requests of different lengths are left-padded: each row has its own
positions and a mask that hides its padding, so a request's result does not
depend on what it is batched with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from pipeline.core.errors import InputError
from pipeline.runtime.checkpoint import CheckpointConfig, load_tensors, read_checkpoint_config
from pipeline.runtime.kvcache import KV_CODECS, KVCache
from pipeline.runtime.limits import EngineLimits
from pipeline.runtime.sampling import GREEDY, SamplingParams, TokenSampler, banned_tokens
from pipeline.runtime.weights import DecoderLayer, ModelWeights, build_weights
from pipeline.serving.models.textcodec import stop_position


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class ReferenceModel:
    """Runs a TensorRT-LLM checkpoint (every format of pipeline.facts.formats: fp16/bf16, W8A16,
    W8A8_SQ_PER_CHANNEL, W4A16_AWQ, FP8; INT8 and FP8 KV caches) with TensorRT-LLM's semantics."""

    def __init__(self, config: CheckpointConfig, weights: ModelWeights, limits: EngineLimits | None) -> None:
        self._config = config
        self._arch = config.arch
        self._weights = weights
        self.limits = limits
        head_dim = self._arch.head_dim
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        self._inv_freq = (1.0 / (self._arch.rope_theta**exponents)).float()
        kv_algo = config.quantization.kv_cache_quant_algo
        self._kv_codec = None if kv_algo is None else KV_CODECS[kv_algo]
        self._kv_scales = tuple(layer.kv_cache_scale for layer in weights.layers)

    @classmethod
    def load(cls, checkpoint_dir: Path, *, limits: EngineLimits | None = None) -> ReferenceModel:
        config = read_checkpoint_config(checkpoint_dir)
        weights = build_weights(load_tensors(checkpoint_dir), config, checkpoint_dir)
        return cls(config, weights, limits)

    @property
    def config(self) -> CheckpointConfig:
        return self._config

    # --- public API -------------------------------------------------------------------------

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, seq, vocab] (float32) for whole, unpadded sequences of one length."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(
                f"input_ids must be [batch, seq] with seq >= 1, got shape {tuple(input_ids.shape)}"
            )
        self._check_ids(input_ids)
        if self.limits is not None:
            self.limits.check([input_ids.shape[1]] * input_ids.shape[0])
        batch, seq = input_ids.shape
        positions = torch.arange(seq).expand(batch, seq)
        valid = torch.ones(batch, seq, dtype=torch.bool)
        return self._forward(input_ids, positions, valid, self._new_cache())

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        end_id: int | None = None,
        sampling: SamplingParams = GREEDY,
        bad_words: Sequence[Sequence[Sequence[int]]] = (),
        stop_words: Sequence[Sequence[Sequence[int]]] = (),
        log_probs: list[list[float]] | None = None,
        on_token: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """New tokens per prompt and returned sequence (sampling.num_return_sequences rows per prompt,
        prompt by prompt), as TensorRT-LLM's decoder chooses them (sampling.py). end_id stops a row and
        is not returned; a stop word (per prompt, token sequences) stops it and is returned, as the
        executor returns it; bad words (per prompt) are never completed. `log_probs`, when given,
        receives one list per row: each returned token's log probability."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise InputError("generate needs at least one prompt, and no empty prompt")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if sampling.beam_width > 1:
            raise InputError(f"beam_width {sampling.beam_width}: the reference runtime has no beam search")
        per_prompt = {"bad_words": bad_words, "stop_words": stop_words}
        for name, words in per_prompt.items():
            if words and len(words) != len(prompts):
                raise InputError(f"{name} needs one list per prompt: {len(words)} for {len(prompts)}")
        # One row per returned sequence: independent samples of its prompt, drawn together.
        copies = sampling.num_return_sequences
        bad_words, stop_words = (
            [row for row in words or [[]] * len(prompts) for _ in range(copies)]
            for words in (bad_words, stop_words)
        )
        prompts = [p for p in prompts for _ in range(copies)]
        if self.limits is not None:
            self.limits.check([len(p) for p in prompts], max_new_tokens)
        # A stop word ends a row as soon as it is completed, so only the last tokens can complete one.
        longest_stop = [max((len(w) for w in words), default=0) for words in stop_words]
        sampler = TokenSampler(sampling)
        batch, longest = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(batch, longest, dtype=torch.long)
        valid = torch.zeros(batch, longest, dtype=torch.bool)
        for i, prompt in enumerate(prompts):
            ids[i, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            valid[i, longest - len(prompt) :] = True
        self._check_ids(ids)
        lengths = torch.tensor([len(p) for p in prompts])
        positions = (torch.arange(longest) - (longest - lengths)[:, None]).clamp(min=0)
        cache = self._new_cache()
        logits = self._forward(ids, positions, valid, cache)[:, -1]
        outputs: list[list[int]] = [[] for _ in prompts]
        running = [True] * batch
        sequences = [list(p) for p in prompts]  # the prompt and the tokens so far, as bad words match them
        counts = None  # each token's occurrences in `sequences`, when a penalty counts them
        if sampling.penalties.counts_tokens:
            counts = torch.zeros(batch, logits.shape[-1])
            for i, prompt in enumerate(prompts):
                counts[i].index_add_(0, torch.tensor(prompt), torch.ones(len(prompt)))
        if log_probs is not None:
            log_probs[:] = [[] for _ in prompts]
        for step in range(max_new_tokens):
            banned = [banned_tokens(s, words) for s, words in zip(sequences, bad_words, strict=True)]
            tokens, token_log_probs = sampler.next_tokens(
                logits, counts, generated=step, end_id=end_id, banned=banned
            )
            if counts is not None:
                counts[torch.arange(batch), tokens] += 1
            for i, token in enumerate(tokens.tolist()):
                sequences[i].append(token)
                if not running[i]:
                    continue
                if end_id is not None and token == end_id:
                    running[i] = False
                    continue
                outputs[i].append(token)
                if log_probs is not None:
                    log_probs[i].append(float(token_log_probs[i]))
                if on_token is not None:
                    on_token(i, token)
                if (
                    longest_stop[i]
                    and stop_position(outputs[i][-longest_stop[i] :], stop_words[i]) is not None
                ):
                    running[i] = False
            if not any(running) or step == max_new_tokens - 1:
                break
            valid = torch.cat([valid, torch.ones(batch, 1, dtype=torch.bool)], dim=1)
            positions = lengths[:, None] + step
            logits = self._forward(tokens[:, None], positions, valid, cache)[:, -1]
        return outputs

    # --- the forward pass ---------------------------------------------------------------------

    def _new_cache(self) -> KVCache:
        return KVCache.empty(len(self._weights.layers), self._kv_codec, self._kv_scales)

    def _check_ids(self, ids: torch.Tensor) -> None:
        vocab = self._arch.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InputError(f"token ids must lie in [0, {vocab}), got {int(ids.max())}")

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """ids/positions [batch, new]; valid [batch, cached + new] marks real (not padding) tokens."""
        eps = self._arch.rms_norm_eps
        h = self._weights.embedding[ids]
        cos, sin = self._rotary(positions)
        mask = self._attention_mask(valid, ids.shape[1])
        for index, layer in enumerate(self._weights.layers):
            h = h + self._attention(layer, rms_norm(h, layer.input_norm, eps), cos, sin, mask, cache, index)
            x = rms_norm(h, layer.post_norm, eps)
            h = h + layer.proj(torch.nn.functional.silu(layer.fc(x)) * layer.gate(x))
        return self._weights.lm_head(rms_norm(h, self._weights.final_norm, eps))

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions[..., None].float() * self._inv_freq  # [batch, new, head_dim/2]
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # [batch, 1, new, head_dim]
        return angles.cos(), angles.sin()

    @staticmethod
    def _attention_mask(valid: torch.Tensor, new: int) -> torch.Tensor:
        """[batch, 1, new, total] True where a query may attend: causal and not padding."""
        total = valid.shape[1]
        query_pos = torch.arange(total - new, total)[:, None]
        causal = torch.arange(total)[None, :] <= query_pos
        return (causal[None] & valid[:, None, :])[:, None]

    def _attention(
        self,
        layer: DecoderLayer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: KVCache,
        index: int,
    ) -> torch.Tensor:
        arch = self._arch
        batch, new, _ = x.shape
        heads, kv_heads, head_dim = arch.num_attention_heads, arch.num_key_value_heads, arch.head_dim
        q, k, v = layer.qkv(x).split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
        q = _rope(q.view(batch, new, heads, head_dim).transpose(1, 2), cos, sin)
        k = _rope(k.view(batch, new, kv_heads, head_dim).transpose(1, 2), cos, sin)
        v = v.view(batch, new, kv_heads, head_dim).transpose(1, 2)
        k, v = cache.append(index, k, v)
        group = heads // kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return layer.dense(out.transpose(1, 2).reshape(batch, new, heads * head_dim))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary embedding: rotate the two halves of each head."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
