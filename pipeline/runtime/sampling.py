"""Choosing the next token: greedy, or temperature/top-k sampling reproducible for a seed."""

from __future__ import annotations

import torch

from pipeline.core.errors import InputError


class TokenSampler:
    def __init__(self, *, temperature: float, top_k: int, seed: int) -> None:
        if temperature < 0:
            raise InputError(f"temperature must be >= 0, got {temperature}")
        if top_k < 0:
            raise InputError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")
        self.temperature = temperature
        self.top_k = top_k
        self._generator = torch.Generator().manual_seed(seed)

    def next_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """One token id per row of logits [batch, vocab]."""
        if self.temperature == 0.0 or self.top_k == 1:
            return logits.argmax(dim=-1)
        scaled = logits.float() / self.temperature
        if self.top_k:
            kth = scaled.topk(min(self.top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        return torch.multinomial(probs, 1, generator=self._generator).squeeze(-1)
