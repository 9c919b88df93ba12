"""The gate's inputs, tokenized and cut to fit the candidate's limits: eval windows, prompts, choices."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pipeline.core.errors import InputError
from pipeline.core.hashing import sha256_file
from pipeline.datasets.jsonl import load_prompts, load_texts
from pipeline.facts.config import GateSection
from pipeline.runtime.limits import EngineLimits


class ChoiceRecord(BaseModel):
    """One line of a multiple-choice set: the context, the candidate endings, the right one's index."""

    context: str
    choices: list[str]
    answer: int


@dataclass(frozen=True)
class ChoiceItem:
    context: list[int]
    continuations: list[list[int]]
    answer: int


@dataclass(frozen=True)
class GateInputs:
    windows: list[list[int]]  # equal-length token windows of the evaluation text
    prompts: list[list[int]]
    max_new_tokens: int
    choices: list[ChoiceItem]
    end_id: int | None
    sources: dict[str, str]  # data file -> sha256
    cut: str = ""  # how the windows asked for were cut to what the evaluation set holds ("": not cut)


def prepare_inputs(
    settings: GateSection, tokenizer: Any, limits: EngineLimits, *, served: EngineLimits | None = None
) -> GateInputs:
    """Tokenize the configured sets; windows, prompts and choices are cut to fit `limits` (the scored
    engine's), prompts and their continuations the `served` engine's too."""
    evaluation = load_texts(settings.eval_dataset)
    prompts = load_prompts(settings.prompts)
    sources = {str(evaluation.path): evaluation.sha256, str(prompts.path): prompts.sha256}
    window_len = min(settings.eval_seq_len, limits.max_input_len)
    stream: list[int] = tokenizer("\n\n".join(evaluation.texts), add_special_tokens=False)["input_ids"]
    count = min(settings.eval_samples, len(stream) // window_len)
    if count == 0:
        raise InputError(
            f"{len(stream)} tokens are fewer than one {window_len}-token window",
            path=evaluation.path,
            hint="use a larger evaluation set or a smaller gate.eval_seq_len",
        )
    windows = [stream[i * window_len : (i + 1) * window_len] for i in range(count)]
    cut = ""
    if count < settings.eval_samples:
        # The set is read once, in order, never repeated: more windows would score the same tokens twice.
        cut = (
            f"gate.eval_samples is {settings.eval_samples}; {evaluation.path} holds {len(stream)} tokens, "
            f"{count} window(s) of {window_len}: the gate scores those {count}"
        )
    both = [limits] if served is None else [limits, served]
    prompt_len = min(lim.max_input_len for lim in both)
    # A prompt keeps its end (what the model continues) when it is longer than the engine takes.
    prompt_ids = [tokenizer(text)["input_ids"][-prompt_len:] for text in prompts.texts]
    room = min(lim.max_seq_len for lim in both) - max(len(p) for p in prompt_ids)
    choices: list[ChoiceItem] = []
    if settings.multiple_choice is not None:
        choices = _choice_items(settings.multiple_choice, tokenizer, limits.max_input_len)
        sources[str(settings.multiple_choice)] = sha256_file(settings.multiple_choice)
    return GateInputs(
        windows=windows,
        prompts=prompt_ids,
        max_new_tokens=max(1, min(settings.max_new_tokens, room)),
        choices=choices,
        end_id=tokenizer.eos_token_id,
        sources=sources,
        cut=cut,
    )


def _choice_items(path: Path, tokenizer: Any, max_input_len: int) -> list[ChoiceItem]:
    if not path.is_file():
        raise InputError("multiple-choice set not found", path=path, hint="check gate.multiple_choice")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = ChoiceRecord.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise InputError(
                f"line {number}: not a {{context, choices, answer}} record ({type(exc).__name__})", path=path
            ) from None
        if not 0 <= record.answer < len(record.choices) or len(record.choices) < 2:
            raise InputError(f"line {number}: answer must index one of at least two choices", path=path)
        context = tokenizer(record.context)["input_ids"]
        continuations = [
            tokenizer(" " + c.strip(), add_special_tokens=False)["input_ids"] for c in record.choices
        ]
        longest = len(context) + max(len(c) for c in continuations)
        if longest > max_input_len:
            raise InputError(f"line {number}: {longest} tokens exceed the engine's max_input_len", path=path)
        items.append(ChoiceItem(context=context, continuations=continuations, answer=record.answer))
    if not items:
        raise InputError("multiple-choice set has no records", path=path)
    return items
