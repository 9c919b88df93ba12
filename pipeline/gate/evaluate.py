"""Run the gate's inputs through a model, then compare a candidate with the reference.

A model is anything with the runner API (`logits`, `generate`): the reference
runtime, a TensorRT-LLM engine through pipeline.runners, or the Hugging Face
reference through `HuggingFaceModel`. Each model's outputs are gathered in one
pass (`observe`), so the reference can be freed before the candidate loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.gate.data import GateInputs
from pipeline.gate.metrics import (
    WindowStats,
    choice_logprob,
    exact_matches,
    greedy_match,
    merge_stats,
    perplexity_increase_pct,
    top1_agreement,
    window_stats,
)


class LanguageModel(Protocol):
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def generate(
        self, prompts: list[list[int]], *, max_new_tokens: int, end_id: int | None = None
    ) -> list[list[int]]: ...


@dataclass(frozen=True)
class Observation:
    """One model's outputs on the gate inputs."""

    windows: WindowStats
    continuations: list[list[int]]
    choices: list[int]  # the choice each multiple-choice item picks


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


Progress = Callable[[float], None]


def observe(
    model: LanguageModel, inputs: GateInputs, *, batch_size: int, advance: Progress = lambda _: None
) -> Observation:
    """Score the windows, continue the prompts greedily and pick an answer per choice item."""
    parts = []
    for start in range(0, len(inputs.windows), batch_size):
        ids = torch.tensor(inputs.windows[start : start + batch_size], dtype=torch.long)
        parts.append(window_stats(model.logits(ids).float(), ids))
        advance(len(ids))
    continuations = []
    for start in range(0, len(inputs.prompts), batch_size):
        batch = inputs.prompts[start : start + batch_size]
        continuations += model.generate(batch, max_new_tokens=inputs.max_new_tokens, end_id=inputs.end_id)
        advance(len(batch))
    picks = []
    for item in inputs.choices:
        scores = []
        for continuation in item.continuations:
            ids = torch.tensor([item.context + continuation], dtype=torch.long)
            scores.append(choice_logprob(model.logits(ids), ids, len(continuation)))
        picks.append(max(range(len(scores)), key=scores.__getitem__))
        advance(1)
    return Observation(windows=merge_stats(parts), continuations=continuations, choices=picks)


def compare(reference: Observation, candidate: Observation, inputs: GateInputs) -> Measures:
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
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids.to(self.device), use_cache=False).logits.float().cpu()

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
