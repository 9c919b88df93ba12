"""Run the gate's inputs through a model, then compare a candidate with the reference.

A model is anything with the runner API (`logits`, `generate`): the reference
runtime, a TensorRT-LLM engine (pipeline.backends.load_runner), or the Hugging Face
reference through `HuggingFaceModel`. Each model's outputs are gathered in one
pass (`observe`), so the reference can be freed before the candidate loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.backends.base import by_length
from pipeline.gate.data import GateInputs
from pipeline.gate.metrics import (
    WindowStats,
    choice_logprob,
    exact_matches,
    greedy_match,
    near_tie_tokens,
    perplexity_increase_pct,
    served_agreement,
    token_scores,
    top1_agreement,
    window_stats,
)


class LanguageModel(Protocol):
    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]: ...

    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: int, end_id: int | None = None
    ) -> list[list[int]]: ...


@dataclass(frozen=True)
class Observation:
    """One model's outputs on the gate inputs."""

    windows: WindowStats
    continuations: list[list[int]]  # greedy, one prompt at a time
    choices: list[int]  # the choice each multiple-choice item picks
    # Per prompt and continuation position: the tokens this model had at a near tie there (the last
    # entry: where it stopped). Empty where the prompt and continuation exceed the model's input.
    ties: list[list[frozenset[int]]]


@dataclass(frozen=True)
class Measures:
    reference_perplexity: float
    candidate_perplexity: float
    perplexity_increase_pct: float
    top1_agreement: float
    greedy_match: float
    exact_greedy_matches: int
    reference_choice_accuracy: float | None
    candidate_choice_accuracy: float | None
    served_greedy_match: float
    served_exact_greedy_matches: int
    served_near_ties: int  # served divergences at a near tie of the gate engine, counted as agreement


Progress = Callable[[float], None]


def continue_prompts(
    model: LanguageModel, inputs: GateInputs, *, advance: Progress = lambda _: None
) -> list[list[int]]:
    """The model's greedy continuation of each prompt, one prompt at a time: an engine picks its
    kernels by batch, so batch 1 is the one shape every engine compared here shares."""
    continuations = []
    for prompt in inputs.prompts:
        continuations += model.generate([prompt], max_new_tokens=inputs.max_new_tokens, end_id=inputs.end_id)
        advance(1)
    return continuations


def near_ties(
    model: LanguageModel,
    inputs: GateInputs,
    continuations: list[list[int]],
    *,
    batch_size: int,
    max_input_len: int,
) -> list[list[frozenset[int]]]:
    """Where the model's own greedy choice had a near tie, from its logits over prompt + continuation."""
    ties: list[list[frozenset[int]]] = [[] for _ in inputs.prompts]
    fits = [
        i
        for i, (p, c) in enumerate(zip(inputs.prompts, continuations, strict=True))
        if len(p) + len(c) <= max_input_len
    ]
    for start in range(0, len(fits), batch_size):
        batch = fits[start : start + batch_size]
        sequences = [inputs.prompts[i] + continuations[i] for i in batch]
        for i, logits in zip(batch, model.context_logits(sequences), strict=True):
            ties[i] = near_tie_tokens(logits[len(inputs.prompts[i]) - 1 :])
    return ties


def observe(
    model: LanguageModel,
    inputs: GateInputs,
    *,
    batch_size: int,
    max_input_len: int,
    advance: Progress = lambda _: None,
) -> Observation:
    """Score the windows, continue the prompts greedily (noting near ties) and pick an answer per
    choice item.

    At most batch_size sequences are in flight at once; each sequence's logits are reduced to
    per-token NLL and top-1 as soon as they arrive.
    """
    scores = []
    for start in range(0, len(inputs.windows), batch_size):
        batch = inputs.windows[start : start + batch_size]
        scores += [
            token_scores(logits, ids) for ids, logits in zip(batch, model.context_logits(batch), strict=True)
        ]
        advance(len(batch))
    continuations = continue_prompts(model, inputs, advance=advance)
    ties = near_ties(model, inputs, continuations, batch_size=batch_size, max_input_len=max_input_len)
    picks = []
    for item in inputs.choices:
        sequences = [item.context + continuation for continuation in item.continuations]
        logprobs = []
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start : start + batch_size]
            logprobs += [
                choice_logprob(token_scores(logits, ids), len(continuation))
                for ids, logits, continuation in zip(
                    batch, model.context_logits(batch), item.continuations[start:], strict=False
                )
            ]
        picks.append(max(range(len(logprobs)), key=logprobs.__getitem__))
        advance(1)
    return Observation(windows=window_stats(scores), continuations=continuations, choices=picks, ties=ties)


def compare(
    reference: Observation, candidate: Observation, served: list[list[int]], inputs: GateInputs
) -> Measures:
    """The candidate (the gate engine) against the reference; the served engine against the candidate."""
    served_match, served_ties = served_agreement(candidate.continuations, served, candidate.ties)
    answers = [item.answer for item in inputs.choices]

    def accuracy(picks: list[int]) -> float | None:
        return sum(p == a for p, a in zip(picks, answers, strict=True)) / len(answers) if answers else None

    return Measures(
        reference_perplexity=reference.windows.perplexity,
        candidate_perplexity=candidate.windows.perplexity,
        perplexity_increase_pct=perplexity_increase_pct(
            reference.windows.perplexity, candidate.windows.perplexity
        ),
        top1_agreement=top1_agreement(reference.windows.top1, candidate.windows.top1),
        greedy_match=greedy_match(reference.continuations, candidate.continuations),
        exact_greedy_matches=exact_matches(reference.continuations, candidate.continuations),
        reference_choice_accuracy=accuracy(reference.choices),
        candidate_choice_accuracy=accuracy(candidate.choices),
        served_greedy_match=served_match,
        served_exact_greedy_matches=exact_matches(candidate.continuations, served),
        served_near_ties=served_ties,
    )


class HuggingFaceModel:
    """The unquantized Hugging Face model behind the runner API (fp16 on a GPU, fp32 on the CPU)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, model_dir: Path) -> HuggingFaceModel:
        from transformers import AutoModelForCausalLM

        on_gpu = torch.cuda.is_available()
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float16 if on_gpu else torch.float32, use_safetensors=True
        )
        return cls(model.to("cuda" if on_gpu else "cpu").eval())

    @torch.inference_mode()
    def context_logits(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        def run(batch: list[list[int]]) -> list[torch.Tensor]:
            ids = torch.tensor(batch, device=self.device)
            # To the host in the model's dtype: widening happens there, a slice at a time.
            return list(self.model(input_ids=ids, use_cache=False).logits.cpu())

        return by_length(sequences, run)

    def close(self) -> None:
        del self.model

    @torch.inference_mode()
    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: int, end_id: int | None = None
    ) -> list[list[int]]:
        # One prompt at a time: no padding, so nothing but the model decides the tokens.
        outputs = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=self.device)
            tokens = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=0,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=end_id,
                pad_token_id=end_id if end_id is not None else 0,
            )[0, len(prompt) :].tolist()
            outputs.append(tokens[: tokens.index(end_id)] if end_id in tokens else tokens)
        return outputs
