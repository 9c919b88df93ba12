"""Calibration texts -> token sequences (with the chat template for instruct models)."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.core.errors import InputError


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    chat_template: str | None

    def __call__(self, text: str, *, add_special_tokens: bool, truncation: bool, max_length: int) -> Any: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool) -> str: ...


def token_samples(texts: list[str], tokenizer: Tokenizer, *, seq_len: int, instruct: bool) -> list[list[int]]:
    """Each text as one token sequence of at most seq_len tokens.

    Instruct models see calibration text the way they see requests: as a user
    turn inside the chat template (which adds its own BOS), so the activation
    ranges include the template's tokens.
    """
    if instruct and not tokenizer.chat_template:
        raise InputError(
            "model.instruct is true but the tokenizer has no chat template",
            hint="set model.instruct = false, or use a model whose tokenizer_config.json has chat_template",
        )
    samples = []
    for text in texts:
        if instruct:
            prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
            ids = tokenizer(prompt, add_special_tokens=False, truncation=True, max_length=seq_len)[
                "input_ids"
            ]
        else:
            ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=seq_len)["input_ids"]
        if ids:
            samples.append(list(ids))
    return samples
