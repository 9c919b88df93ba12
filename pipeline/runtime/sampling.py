"""Choosing the next token as TensorRT-LLM's decoder does: temperature and penalties, banned words, then
greedy or top-k/top-p sampling reproducible for a seed, with each chosen token's log probability.

What each step follows (TensorRT-LLM's C++ decoder; the tests cite the same files):
- temperature and penalties: batchApplyPenalty (cpp/tensorrt_llm/kernels/penaltyKernels.cu,
  NVIDIA/TensorRT-LLM 249d93d551e8ec11d6d62aabfc9ca8df41ead84c). A temperature other than 1 multiplies
  the logits by 1 / (temperature + 1e-6) first; then each token that occurs in the prompt or the tokens
  generated so far is penalized, by repetition (a positive logit divided by it, a negative one
  multiplied), presence (subtracted once) and frequency (subtracted once per occurrence); while fewer
  than min_tokens are generated the end token is masked. A min_tokens that every request of the batch
  has at its default, 1, masks nothing (penaltyLayer.cpp, NVIDIA/TensorRT-LLM
  05316d3313360012536ace46c781518f5afae75e: GET_PENALTIES hands the kernel no min lengths when all
  batch slots hold DefaultDecodingParams::getMinLength()); one generate call shares one SamplingParams,
  so min_tokens 1 is as 0 here. (Upstream, a request in flight beside one with another min_tokens has
  its 1 applied; that depends on what the executor batches it with, which the reference runs alone.)
- bad words: ban_bad_words (cpp/tensorrt_llm/kernels/banBadWords.cu, 23bc5b7c490576071a021d6fcfc32c5808db36a2):
  a one-token word is always banned; a longer one bans its last token when the sequence so far (prompt
  included) ends with the rest of it. Token 0 is never banned.
- top-k/top-p: regularizeTopKTopP (cpp/tensorrt_llm/kernels/samplingTopKKernels.h,
  e41b05cdc69021efb4116ed5f32eeb1840a47981): top_k 0 with top_p 0 is greedy (top_k 1), top_k > 0 with
  top_p 0 is top_p 1. topKStage2Sampling (samplingTopKKernels.cu, 03961722f65265573cad179baca3bc5fe8c03f76):
  a uniform draw scaled to top_p of the kept mass, matched against the running sum in descending
  order; the log probability returned is the log of the token's probability under the whole
  vocabulary's softmax of the processed logits (not renormalized to the kept tokens). With top_k 0 the
  top-p kernel (samplingTopPKernels.cu topPSsampling, 14e801da3632eb71367b847e335c4f2b09098651) draws
  from the same distribution: uniform * top_p against the descending running sum of the softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.core.errors import InputError

TEMPERATURE_EPSILON = 1e-6  # penaltyKernels.cu: invTemperature = 1 / (temperature + 1e-6)
DEFAULT_MIN_TOKENS = 1  # DefaultDecodingParams::getMinLength (Penalties.min_tokens)


@dataclass(frozen=True)
class Penalties:
    repetition: float = 1.0
    presence: float = 0.0
    frequency: float = 0.0
    # TensorRT-LLM's default (layers/defaultDecodingParams.h getMinLength, NVIDIA/TensorRT-LLM
    # 1020a8d799d04a1776f8eec19496ecafa2558506), which the backend leaves in place when the input is
    # absent (utils.cc getSamplingConfigFromTensors: minTokens std::nullopt).
    min_tokens: int = DEFAULT_MIN_TOKENS

    def __post_init__(self) -> None:
        if self.repetition <= 0:
            raise InputError(f"repetition_penalty must be > 0, got {self.repetition}")
        if self.min_tokens < 0:
            raise InputError(f"min_tokens must be >= 0, got {self.min_tokens}")

    @property
    def counts_tokens(self) -> bool:
        return (self.repetition, self.presence, self.frequency) != (1.0, 0.0, 0.0)

    def apply(
        self, logits: torch.Tensor, counts: torch.Tensor | None, generated: int, end_id: int | None
    ) -> torch.Tensor:
        """logits [batch, vocab] after the penalties; counts [batch, vocab]: each token's occurrences in
        the prompt and the tokens so far (needed when counts_tokens); `generated`: tokens generated so far."""
        out = logits
        if self.counts_tokens:
            assert counts is not None
            seen = counts > 0
            repeated = torch.where(out < 0, out * self.repetition, out / self.repetition)
            out = torch.where(seen, repeated - self.presence - self.frequency * counts, out)
        if end_id is not None and self.min_tokens != DEFAULT_MIN_TOKENS and generated < self.min_tokens:
            out = out.clone()
            out[:, end_id] = float("-inf")
        return out


NO_PENALTIES = Penalties()


def banned_tokens(sequence: Sequence[int], bad_words: Sequence[Sequence[int]]) -> list[int]:
    """The tokens a row may not take next, given its sequence so far (prompt included)."""
    banned = []
    for word in bad_words:
        *prefix, last = word
        if last <= 0 or len(sequence) < len(prefix):
            continue
        if not prefix or list(sequence[len(sequence) - len(prefix) :]) == prefix:
            banned.append(last)
    return banned


@dataclass(frozen=True)
class SamplingParams:
    """How one generate call chooses tokens, for every prompt of it: the options TensorRT-LLM's
    SamplingConfig takes (cpp/tensorrt_llm/executor/samplingConfig.cpp, NVIDIA/TensorRT-LLM
    3585984b32cded5cc002d3087d3da4b0fd9fb8a5), checked as its constructor checks them. Each backend's
    runner maps it onto its runtime (the engine's: ModelRunnerCpp.generate's keywords).

    The defaults are greedy decoding. top_k 0 is no top-k filter and top_p 1 no nucleus; top_k 0 with
    top_p 0 is greedy, as regularizeTopKTopP reads it (module docstring). length_penalty acts in beam
    search only: at beam_width 1 the decoder runs the sampling layer, which never reads it
    (layers/decodingLayer.cpp, NVIDIA/TensorRT-LLM 03961722f65265573cad179baca3bc5fe8c03f76).
    num_return_sequences > 1 at beam_width 1 draws that many independent samples of each prompt.
    """

    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    penalties: Penalties = NO_PENALTIES
    length_penalty: float = 0.0  # DefaultDecodingParams::getLengthPenalty
    beam_width: int = 1
    num_return_sequences: int = 1

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0: no top-k filter), got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise InputError(f"top_p must lie in [0, 1], got {self.top_p}")
        if self.seed < 0:
            raise InputError(f"seed must be >= 0 (an unsigned 64-bit integer), got {self.seed}")
        if self.length_penalty < 0:
            raise InputError(f"length_penalty must be >= 0, got {self.length_penalty}")
        if self.beam_width < 1:
            raise InputError(f"beam_width must be >= 1, got {self.beam_width}")
        if self.num_return_sequences < 1:
            raise InputError(f"num_return_sequences must be >= 1, got {self.num_return_sequences}")
        if self.beam_width > 1 and self.num_return_sequences > self.beam_width:
            raise InputError(
                f"num_return_sequences ({self.num_return_sequences}) must not exceed beam_width "
                f"({self.beam_width}) in beam search"
            )


GREEDY = SamplingParams()


class TokenSampler:
    def __init__(self, params: SamplingParams = GREEDY) -> None:
        self.temperature = params.temperature
        # regularizeTopKTopP: neither filter is greedy; a top-k filter alone is top_p 1
        self.top_k = 1 if params.top_k == 0 and params.top_p == 0.0 else params.top_k
        self.top_p = 1.0 if params.top_p == 0.0 else params.top_p
        self.penalties = params.penalties
        self._generator = torch.Generator().manual_seed(params.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def processed(
        self,
        logits: torch.Tensor,
        counts: torch.Tensor | None = None,
        *,
        generated: int = 0,
        end_id: int | None = None,
        banned: Sequence[Sequence[int]] = (),
    ) -> torch.Tensor:
        """logits [batch, vocab] as the sampling step sees them: temperature, penalties, banned words."""
        out = logits.float()
        if self.temperature != 1.0:
            out = out * (1.0 / (self.temperature + TEMPERATURE_EPSILON))
        out = self.penalties.apply(out, counts, generated, end_id)
        if any(banned):
            out = out.clone()
            for row, tokens in enumerate(banned):
                out[row, list(tokens)] = float("-inf")
        return out

    def next_tokens(
        self,
        logits: torch.Tensor,
        counts: torch.Tensor | None = None,
        *,
        generated: int = 0,
        end_id: int | None = None,
        banned: Sequence[Sequence[int]] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One token id per row of logits [batch, vocab], and its log probability (module docstring)."""
        scaled = self.processed(logits, counts, generated=generated, end_id=end_id, banned=banned)
        log_probs = torch.log_softmax(scaled, dim=-1)
        if self.greedy:
            tokens = scaled.argmax(dim=-1)
        else:
            if self.top_k:
                kth = scaled.topk(min(self.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            probs = torch.softmax(scaled, dim=-1)
            if self.top_p < 1.0:
                probs = nucleus(probs, self.top_p)
            tokens = torch.multinomial(probs, 1, generator=self._generator).squeeze(-1)
        return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1)


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The distribution topKStage2Sampling draws from at top_p (module docstring): each token keeps the
    part of its probability that lies below top_p in the descending running sum, so the last one kept
    keeps only a share of it. Rows sum to 1."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    upto = sorted_probs.cumsum(dim=-1)
    kept = (upto.clamp(max=top_p) - (upto - sorted_probs)).clamp(min=0)
    out = torch.zeros_like(probs).scatter(-1, order, kept)
    return out / out.sum(dim=-1, keepdim=True)
