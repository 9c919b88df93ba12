"""Where the suite's numeric tolerances come from: the formats' rounding, never one machine's arithmetic.

Each bound a test asserts is built here from a format's definition and the tensors at hand:

- Unit roundoff u of a float format (round to nearest): |fl(x) - x| <= u |x| for a normal x, and at
  most half the subnormal spacing below the normal range. u = eps / 2: fp32 2^-24, fp16 2^-11, bf16 2^-8.
- An fp32 dot product of length K, summed in any order, is within gamma_K * sum_i |a_i| |b_i| of the
  exact one, gamma_K = K u / (1 - K u) (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
  Two implementations that sum in different orders (a different CPU, thread count or kernel) are
  within twice that of each other.
- Through a network, rounding errors stack along the longest chain of dependent sums: for a Llama
  decoder that is, per layer, the two RMSNorm means (hidden), the qkv, dense, gate/up and down
  products (hidden, heads x head_dim, hidden, intermediate), the attention scores (head_dim), the
  softmax sum and the weighted sum of values (sequence length); then the final norm and the lm_head
  (hidden). To first order every logit is then within gamma_N * (|h| |W_lm|^T) of the exact one,
  N the chain length and |h| |W_lm|^T the lm_head's product of absolute values: the magnitude every
  rounding along the chain is relative to, once normalized by the final RMSNorm.
- E4M3 (float8_e4m3fn): 3 mantissa bits, exponents down to -6; the spacing of the grid at |v| is
  2^(max(floor(log2 |v|), -6) - 3), so rounding to nearest moves v by at most half of it.
- A symmetric integer format with scale s moves a value by at most s / 2 unless it is clipped.
"""

from __future__ import annotations

import os

import torch

U32 = torch.finfo(torch.float32).eps / 2  # 2^-24
U16 = torch.finfo(torch.float16).eps / 2  # 2^-11
UBF16 = torch.finfo(torch.bfloat16).eps / 2  # 2^-8
# fp16 holds |x| below its normal range (2^-14) to an absolute half spacing of 2^-25.
FP16_SUBNORMAL_HALF_SPACING = torch.finfo(torch.float16).smallest_normal * torch.finfo(torch.float16).eps / 2
E4M3_MANTISSA_BITS = 3
E4M3_MIN_EXPONENT = -6  # float8_e4m3fn's smallest normal is 2^-6; below it the spacing stays 2^-9


def use_test_threads() -> int:
    """torch's intra-op threads: OMP_NUM_THREADS when set (the suite is run with 1 and with 2), else 2."""
    threads = int(os.environ.get("OMP_NUM_THREADS") or 2)
    torch.set_num_threads(threads)
    return threads


def gamma(n: int, u: float = U32) -> float:
    """Higham's gamma_n: the relative error bound of n successive roundings (n u < 1)."""
    assert n * u < 1
    return n * u / (1 - n * u)


def fp16_rounding_bound(x: torch.Tensor) -> torch.Tensor:
    """How far fp16 storage can move each element of x (fp32): u16 |x|, or half the subnormal spacing."""
    return torch.maximum(x.abs() * U16, torch.full_like(x, FP16_SUBNORMAL_HALF_SPACING))


def e4m3_spacing(v: torch.Tensor) -> torch.Tensor:
    """The E4M3 grid spacing at |v| (v in the scaled domain, x / scale)."""
    _, exponent = torch.frexp(
        v.abs().float()
    )  # |v| = m 2^exponent, m in [0.5, 1): floor(log2|v|) = exponent - 1
    floor_log2 = (exponent - 1).clamp(min=E4M3_MIN_EXPONENT)
    return torch.pow(2.0, (floor_log2 - E4M3_MANTISSA_BITS).float())


def decoder_chain_length(
    *, layers: int, hidden: int, heads: int, head_dim: int, intermediate: int, seq_len: int
) -> int:
    """The number of dependent roundings from the embedding to a logit (see the module docstring)."""
    per_layer = (
        hidden  # input RMSNorm: mean of squares
        + hidden  # qkv
        + head_dim  # q . k
        + seq_len  # softmax denominator
        + seq_len  # probabilities x values
        + heads * head_dim  # dense
        + hidden  # post-attention RMSNorm
        + hidden  # gate / up
        + intermediate  # down
    )
    return layers * per_layer + hidden + hidden  # final RMSNorm, lm_head


def logit_rounding_bound(hf_model, input_ids: torch.Tensor) -> torch.Tensor:
    """Per logit [batch, seq, vocab]: how far a correct fp32 implementation of this Hugging Face Llama/Mistral
    model can be from the exact logits, gamma_N (|h| |W_lm|^T) (see the module docstring). hf_model is fp32."""
    cfg = hf_model.config
    with torch.no_grad():
        hidden = hf_model(input_ids, output_hidden_states=True).hidden_states[-1]  # after the final norm
    magnitude = hidden.abs() @ hf_model.lm_head.weight.detach().abs().T
    chain = decoder_chain_length(
        layers=cfg.num_hidden_layers,
        hidden=cfg.hidden_size,
        heads=cfg.num_attention_heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
        intermediate=cfg.intermediate_size,
        seq_len=input_ids.shape[1],
    )
    return gamma(chain) * magnitude


def decided_steps(logits: torch.Tensor, bound: torch.Tensor) -> int:
    """Leading greedy steps whose choice no perturbation within `bound` can change.

    logits, bound: [steps, vocab], the reference's logits at each step of its greedy continuation and a
    bound on how far another correct evaluation's logits may be from them, per logit. A step is decided
    when the top logit stays above every other one however each moves within its bound; after the
    first undecided step (a near tie) two continuations may legitimately part.
    """
    top = logits.argmax(-1, keepdim=True)
    clearance = (logits.gather(-1, top) - bound.gather(-1, top)) - (logits + bound)
    clearance.scatter_(-1, top, float("inf"))
    undecided = (clearance <= 0).any(-1).nonzero()
    return int(undecided[0]) if len(undecided) else logits.shape[0]


def off_grid_disagreements(
    got: torch.Tensor, oracle: torch.Tensor, exact: torch.Tensor, step: torch.Tensor, rel: float
) -> torch.Tensor:
    """Where two roundings of the same values to one grid disagree other than at a tie.

    got, oracle: grid values (in grid units) from two implementations; exact: the pre-rounding value
    (as one of them computed it); step: the grid spacing at each element; rel: how far (relative) the
    two implementations' pre-rounding values can be apart (their fp32 roundings of the scaling). Two
    results may differ only by one step, and only where exact lies within rel |exact| of the midpoint
    between them. Returns the mask of elements that break that.
    """
    differ = got != oracle
    one_step = (got - oracle).abs() <= step
    at_tie = (exact - (got + oracle) / 2).abs() <= rel * exact.abs()
    return differ & ~(one_step & at_tie)
