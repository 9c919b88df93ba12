"""The gate's measures, pure functions of token ids and logits (no models, no IO).

Logits are scored a slice of positions at a time: each slice is widened to
float32, reduced to its next-token NLL and argmax, and dropped, so a batch of
long windows over a 32k vocabulary never needs a float32 copy of all of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.core.errors import StageError

# Positions widened to float32 at once: 256 x 32768 x 4 B = 32 MiB for Mistral's vocabulary.
SCORE_CHUNK_POSITIONS = 256


@dataclass(frozen=True)
class TokenScores:
    """What one sequence's logits come to: per next token, its NLL and the top-1 prediction."""

    nll: torch.Tensor  # [len - 1] float32
    top1: torch.Tensor  # [len - 1] int64


def token_scores(logits: torch.Tensor, ids: list[int], *, chunk: int = SCORE_CHUNK_POSITIONS) -> TokenScores:
    """Score logits [len, vocab] (any float dtype, on the CPU) of the sequence ids."""
    if logits.dim() != 2 or logits.shape[0] != len(ids):
        raise StageError(
            "gate",
            f"the model returned logits of shape {tuple(logits.shape)} for a {len(ids)}-token sequence",
        )
    targets = torch.tensor(ids[1:], dtype=torch.long)
    nll, top1 = [], []
    for start in range(0, len(ids) - 1, chunk):
        part = logits[start : min(start + chunk, len(ids) - 1)].float()
        picked = part.gather(-1, targets[start : start + len(part), None]).squeeze(-1)
        nll.append(torch.logsumexp(part, dim=-1) - picked)
        top1.append(part.argmax(-1))
    empty = torch.empty(0)
    return TokenScores(nll=torch.cat(nll) if nll else empty, top1=torch.cat(top1) if top1 else empty.long())


@dataclass(frozen=True)
class WindowStats:
    """What one model's logits over the evaluation windows come to."""

    nll_sum: float  # summed negative log-likelihood of every next token
    tokens: int  # how many next tokens were scored
    top1: torch.Tensor  # [windows, len - 1] argmax prediction at each position

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)


def window_stats(scores: list[TokenScores]) -> WindowStats:
    """The evaluation windows' scores (equal lengths) as one set of statistics."""
    return WindowStats(
        nll_sum=float(sum(float(s.nll.sum()) for s in scores)),
        tokens=sum(len(s.nll) for s in scores),
        top1=torch.stack([s.top1 for s in scores]),
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


# A near tie: two tokens whose gate-engine logits differ by less than this many fp16 steps (ulps) at
# the larger logit. Engines write logits in fp16; two engines of one checkpoint that pick different
# kernels round the lm_head GEMM's output each by up to half a step (one step between them, two on the
# margin of two tokens), and its fp16 input, the final norm's output, by up to half a step of its own,
# which reaches the logits at a like relative size: two more. A margin under 4 steps can flip on the
# rounding of the last two operations alone, before anything earlier in the network differs.
NEAR_TIE_FP16_STEPS = 4


def fp16_step(x: torch.Tensor) -> torch.Tensor:
    """The spacing of fp16 numbers at |x| (normal range: 2^(exponent - 10))."""
    exponent = torch.floor(torch.log2(x.abs().clamp(min=2.0**-14)))
    return torch.pow(2.0, exponent - 10)


def near_tie_tokens(logits: torch.Tensor, steps: float = NEAR_TIE_FP16_STEPS) -> list[frozenset[int]]:
    """Per row of logits [positions, vocab]: the tokens whose logit is within `steps` fp16 steps of
    the row's largest."""
    logits = logits.float()
    top = logits.max(dim=-1, keepdim=True).values
    close = logits >= top - steps * fp16_step(top)
    return [frozenset(row.nonzero().flatten().tolist()) for row in close]


def served_agreement(
    gate: list[list[int]], served: list[list[int]], ties: list[list[frozenset[int]]]
) -> tuple[float, int]:
    """greedy_match of the served continuations against the gate engine's, where a first divergence
    onto a token the gate engine had at a near tie (ties[prompt][position]) counts as agreement;
    and how many prompts were so counted."""
    shares, tied = [], 0
    for ref, cand, at in zip(gate, served, ties, strict=True):
        i = common_prefix(ref, cand)
        if ref != cand and i < len(at) and i < len(cand) and cand[i] in at[i]:
            shares.append(1.0)
            tied += 1
        else:
            shares.append(greedy_match([ref], [cand]))
    return sum(shares) / len(shares), tied


def exact_matches(reference: list[list[int]], candidate: list[list[int]]) -> int:
    return sum(ref == cand for ref, cand in zip(reference, candidate, strict=True))


def choice_logprob(scores: TokenScores, continuation_len: int) -> float:
    """Summed log-probability of the last `continuation_len` tokens of one scored sequence."""
    return -float(scores.nll[-continuation_len:].sum())
