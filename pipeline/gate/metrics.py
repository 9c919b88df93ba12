"""The gate's measures, pure functions of token ids and log-probabilities (no models, no IO)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WindowStats:
    """What one model's logits over the evaluation windows come to."""

    nll_sum: float  # summed negative log-likelihood of every next token
    tokens: int  # how many next tokens were scored
    top1: torch.Tensor  # [windows, len - 1] argmax prediction at each position

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)


def window_stats(logits: torch.Tensor, input_ids: torch.Tensor) -> WindowStats:
    """Next-token NLL and top-1 predictions of logits [batch, seq, vocab] for input_ids [batch, seq]."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = input_ids[:, 1:]
    nll = -logprobs.gather(-1, targets[..., None]).squeeze(-1)
    return WindowStats(nll_sum=float(nll.sum()), tokens=targets.numel(), top1=logits[:, :-1].argmax(-1))


def merge_stats(parts: list[WindowStats]) -> WindowStats:
    return WindowStats(
        nll_sum=sum(p.nll_sum for p in parts),
        tokens=sum(p.tokens for p in parts),
        top1=torch.cat([p.top1 for p in parts]),
    )


def perplexity_increase_pct(reference: float, candidate: float) -> float:
    return (candidate / reference - 1.0) * 100.0


def top1_agreement(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Fraction of positions where both models predict the same next token."""
    return float((reference == candidate).float().mean())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # stops at the shorter one
        if x != y:
            break
        n += 1
    return n


def greedy_match(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Mean share of each reference continuation the candidate reproduces before it first diverges.

    An early divergence costs more than a late one, as it does to a reader; two empty
    continuations (both stopped at once) match fully.
    """
    shares = [
        common_prefix(ref, cand) / max(len(ref), len(cand)) if (ref or cand) else 1.0
        for ref, cand in zip(reference, candidate, strict=True)
    ]
    return sum(shares) / len(shares)


def exact_matches(reference: list[list[int]], candidate: list[list[int]]) -> int:
    return sum(ref == cand for ref, cand in zip(reference, candidate, strict=True))


def choice_logprob(logits: torch.Tensor, input_ids: torch.Tensor, continuation_len: int) -> float:
    """Summed log-probability of the last `continuation_len` tokens of one sequence [1, seq]."""
    logprobs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    targets = input_ids[0, 1:]
    picked = logprobs.gather(-1, targets[:, None]).squeeze(-1)
    return float(picked[-continuation_len:].sum())
