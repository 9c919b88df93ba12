"""The shape limits a runtime enforces, as a TensorRT-LLM engine enforces its build profile."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import InputError


@dataclass(frozen=True)
class RuntimeLimits:
    max_batch_size: int
    max_input_len: int
    max_seq_len: int  # prompt + generated tokens

    def check(self, input_lens: list[int], max_new_tokens: int = 0) -> None:
        """Refuse a request an engine built with these limits would refuse, naming the limit."""
        if len(input_lens) > self.max_batch_size:
            raise InputError(
                f"batch of {len(input_lens)} requests exceeds max_batch_size={self.max_batch_size}",
                hint="split the requests into smaller batches or build a profile with a larger max_batch_size",
            )
        longest = max(input_lens, default=0)
        if longest > self.max_input_len:
            raise InputError(
                f"input of {longest} tokens exceeds max_input_len={self.max_input_len}",
                hint="shorten the prompt or build a profile with a larger max_input_len",
            )
        if longest + max_new_tokens > self.max_seq_len:
            raise InputError(
                f"{longest} input + {max_new_tokens} new tokens exceeds max_seq_len={self.max_seq_len}",
                hint="ask for fewer new tokens or build a profile with a larger max_seq_len",
            )
