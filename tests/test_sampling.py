"""The reference runtime's sampling against oracles worked by hand from TensorRT-LLM's decoder kernels:
- penaltyKernels.cu batchApplyPenalty (NVIDIA/TensorRT-LLM 249d93d551e8ec11d6d62aabfc9ca8df41ead84c):
  temperature first (times 1 / (t + 1e-6), only when t != 1), then repetition, presence, frequency on
  the tokens seen in the prompt and the output so far, then the end token masked below min_tokens;
- banBadWords.cu ban_bad_words (23bc5b7c490576071a021d6fcfc32c5808db36a2): one-token words always,
  longer ones when the sequence ends with all but their last token;
- samplingTopKKernels.h regularizeTopKTopP (e41b05cdc69021efb4116ed5f32eeb1840a47981): top_k 0 and
  top_p 0 is greedy, top_k > 0 with top_p 0 is top_p 1;
- samplingTopKKernels.cu topKStage2Sampling (03961722f65265573cad179baca3bc5fe8c03f76): the draw is
  uniform * top_p * (kept mass) against the descending running sum (with top_k 0, samplingTopPKernels.cu
  topPSsampling at 14e801da3632eb71367b847e335c4f2b09098651 draws uniform * top_p against the same
  running sum of the whole softmax); the log probability is the log of
  the token's softmax probability over the whole vocabulary (normalizeLogProbs defaults to false,
  defaultDecodingParams.h).
Worked figures are sums of small dyadic fractions, exact in float32, so they are compared exactly, or
to float32's rounding of a division (rel 1e-6) where one is involved.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.runtime.sampling import Penalties, SamplingParams, TokenSampler, banned_tokens, nucleus

LOGITS = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
COUNTS = torch.tensor([[1.0, 2.0, 0.0, 0.0]])  # token 0 seen once, token 1 twice (prompt + generated)


def test_repetition_presence_and_frequency_penalize_seen_tokens_only():
    got = Penalties(repetition=2.0, presence=0.5, frequency=0.25).apply(LOGITS, COUNTS, 0, None)
    # token 0: 2 / 2 - 0.5 - 0.25 * 1; token 1 (negative): -1 * 2 - 0.5 - 0.25 * 2; 2 and 3 unseen
    assert got.tolist() == [[0.25, -3.0, 0.5, 3.0]]


def test_min_tokens_masks_the_end_token_until_enough_are_generated():
    penalties = Penalties(min_tokens=2)
    assert penalties.apply(LOGITS, COUNTS, 1, end_id=3)[0, 3] == float("-inf")
    assert penalties.apply(LOGITS, COUNTS, 2, end_id=3)[0, 3] == 3.0


def test_min_tokens_defaults_to_tensorrt_llms_1_which_masks_nothing_as_0_does():
    """DefaultDecodingParams::getMinLength is 1 (layers/defaultDecodingParams.h, NVIDIA/TensorRT-LLM
    1020a8d799d04a1776f8eec19496ecafa2558506), and the penalty layer hands the kernel no min lengths
    when every slot of the batch holds that default (penaltyLayer.cpp GET_PENALTIES,
    05316d3313360012536ace46c781518f5afae75e): the end token stays drawable at the first step."""
    assert Penalties().min_tokens == 1
    for min_tokens in (0, 1):
        assert Penalties(min_tokens=min_tokens).apply(LOGITS, COUNTS, 0, end_id=3)[0, 3] == 3.0
    assert Penalties(min_tokens=2).apply(LOGITS, COUNTS, 0, end_id=3)[0, 3] == float("-inf")


def test_a_length_penalty_leaves_sampling_at_one_beam_as_it_is():
    """At beam_width 1 the decoder's sampling layer runs, which never reads the length penalty
    (layers/decodingLayer.cpp, NVIDIA/TensorRT-LLM 03961722f65265573cad179baca3bc5fe8c03f76)."""
    logits = LOGITS.repeat(64, 1)
    plain = TokenSampler(SamplingParams(temperature=1.0, seed=9)).next_tokens(logits)
    for length_penalty in (0.0, 0.5, 1.0, 2.0):
        sampling = SamplingParams(temperature=1.0, seed=9, length_penalty=length_penalty)
        got = TokenSampler(sampling).next_tokens(logits)
        assert torch.equal(got[0], plain[0]) and torch.equal(got[1], plain[1])


def test_temperature_scales_before_the_penalties_and_only_when_not_1():
    sampler = TokenSampler(
        SamplingParams(temperature=0.5, top_k=1, seed=0, penalties=Penalties(presence=1.0))
    )
    got = sampler.processed(LOGITS, COUNTS)
    scale = 1.0 / (0.5 + 1e-6)
    want = [2.0 * scale - 1.0, -1.0 * scale - 1.0, 0.5 * scale, 3.0 * scale]
    assert got[0].tolist() == pytest.approx(want, rel=1e-6)
    assert torch.equal(
        TokenSampler(SamplingParams(temperature=1.0, top_k=1, seed=0)).processed(LOGITS), LOGITS
    )


def test_greedy_decoding_takes_the_processed_argmax():
    """Token 3 leads; seen three times with frequency 1, it falls below token 0 (3 - 3 < 2)."""
    counts = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    sampler = TokenSampler(
        SamplingParams(temperature=1.0, top_k=1, seed=0, penalties=Penalties(frequency=1.0))
    )
    assert sampler.next_tokens(LOGITS, counts)[0].tolist() == [0]
    # at temperature 0 the logits are scaled by 1 / 1e-6 first: the same penalty is lost next to them
    sampler = TokenSampler(
        SamplingParams(temperature=0.0, top_k=0, seed=0, penalties=Penalties(frequency=1.0))
    )
    assert sampler.next_tokens(LOGITS, counts)[0].tolist() == [3]


def test_top_k_0_and_top_p_0_is_greedy_and_top_p_0_with_top_k_is_no_top_p():
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    greedy, _ = TokenSampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.0, seed=5)).next_tokens(logits)
    assert torch.equal(greedy, logits.argmax(dim=-1))
    top_k, _ = TokenSampler(SamplingParams(temperature=1.0, top_k=10, top_p=1.0, seed=5)).next_tokens(logits)
    assert torch.equal(
        TokenSampler(SamplingParams(temperature=1.0, top_k=10, top_p=0.0, seed=5)).next_tokens(logits)[0],
        top_k,
    )


def test_top_p_keeps_the_share_of_each_probability_below_it():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    # descending: 0.5, 0.3, 0.15, 0.05; running sums 0.5, 0.8: token 1 whole, token 3 the 0.2 below 0.7
    got = nucleus(probs, 0.7)
    assert got[0].tolist() == pytest.approx([0.0, 0.5 / 0.7, 0.0, 0.2 / 0.7], rel=1e-6)
    assert nucleus(probs, 0.5)[0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_top_p_sampling_draws_only_the_kept_tokens_in_their_proportions():
    """n = 2000 draws at top_p 0.7 from the distribution above: only tokens 1 and 3, token 3 with
    p = 0.2 / 0.7 = 2/7. The count of token 3 is binomial(n, p); the bound is 5 standard deviations,
    sqrt(n p (1 - p)) ~ 20.2, so a correct sampler fails it with probability below 6e-7."""
    n, p = 2000, 2 / 7
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]])).repeat(n, 1)
    drawn, _ = TokenSampler(SamplingParams(temperature=1.0, top_k=0, seed=1, top_p=0.7)).next_tokens(logits)
    assert set(drawn.tolist()) == {1, 3}
    assert abs((drawn == 3).sum().item() - n * p) < 5 * math.sqrt(n * p * (1 - p))


def test_log_probs_are_the_whole_vocabularys_softmax_of_the_processed_logits():
    """Even under top-k 2 (tokens 0 and 3 kept) the log probability is not renormalized to them."""
    tokens, log_probs = TokenSampler(SamplingParams(temperature=1.0, top_k=2, seed=3)).next_tokens(
        LOGITS.repeat(8, 1)
    )
    whole = torch.log_softmax(LOGITS[0], dim=-1)
    assert set(tokens.tolist()) <= {0, 3}
    assert log_probs.tolist() == pytest.approx([whole[t].item() for t in tokens.tolist()], rel=1e-6)


def test_a_bad_word_bans_its_last_token_where_the_sequence_ends_with_the_rest():
    words = [[5], [7, 8, 9], [0]]  # token 0 is never banned (ban_bad_words: 0 < banned_token)
    assert banned_tokens([1, 2], words) == [5]
    assert banned_tokens([1, 7, 8], words) == [5, 9]
    assert banned_tokens([7, 2, 8], words) == [5]
    assert banned_tokens([8], [[7, 8, 9]]) == []  # shorter than the word's prefix


def test_a_banned_token_is_never_drawn():
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_k=0, seed=0, top_p=1.0))
    tokens, _ = sampler.next_tokens(torch.zeros(256, 4), banned=[[1, 2]] * 256)  # both others: 1 - 2^-255
    assert set(tokens.tolist()) == {0, 3}


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Penalties(repetition=0.0), "repetition_penalty must be > 0"),
        (lambda: Penalties(min_tokens=-1), "min_tokens must be >= 0"),
        (lambda: SamplingParams(top_p=1.5), "top_p must lie in"),
        (lambda: SamplingParams(temperature=-0.5), "temperature must be >= 0"),
        (lambda: SamplingParams(top_k=-1), "top_k must be >= 0"),
        (lambda: SamplingParams(seed=-1), "seed must be >= 0"),
        # samplingConfig.cpp (NVIDIA/TensorRT-LLM 3585984b32cded5cc002d3087d3da4b0fd9fb8a5): the
        # constructor's checkLengthPenalty, checkBeamWidth and checkNumReturnSequences
        (lambda: SamplingParams(length_penalty=-0.5), "length_penalty must be >= 0"),
        (lambda: SamplingParams(beam_width=0), "beam_width must be >= 1"),
        (lambda: SamplingParams(num_return_sequences=0), "num_return_sequences must be >= 1"),
        (lambda: SamplingParams(beam_width=2, num_return_sequences=3), "must not exceed beam_width"),
    ],
)
def test_out_of_range_values_are_refused_by_name(make, message):
    with pytest.raises(InputError, match=message):
        make()
