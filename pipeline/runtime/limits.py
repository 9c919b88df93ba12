"""The shape limits an engine was built with, which every runtime enforces as TensorRT-LLM enforces
its build profile.

An engine's config.json keeps them in its build_config (what trtllm-build wrote, or what the
reference build packed in the same shape); `EngineLimits.of_engine` is the one reader of them, for
the runners, publish, the gate and the bench. What a profile asks for is
pipeline.facts.config.Profile; what the plan derives from it, pipeline.planning.memory.ProfilePlan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from pipeline.core.errors import InputError

if TYPE_CHECKING:
    from pipeline.facts.config import Profile


@dataclass(frozen=True)
class EngineLimits:
    # The names are build_config's keys (expected_build_config writes them from these fields).
    max_batch_size: int
    max_input_len: int
    max_seq_len: int  # prompt + generated tokens

    @classmethod
    def of_profile(cls, profile: Profile) -> EngineLimits:
        """The limits an engine built for `profile` carries."""
        return cls(profile.max_batch_size, profile.max_input_len, profile.max_seq_len)

    @classmethod
    def of_engine(cls, engine_config: Mapping[str, Any], *, source: Path) -> EngineLimits:
        """The limits in an engine's config.json (as read_engine_config of
        pipeline.backends.trtllm_engine.engine reads it), or one line naming the file (source) and the field."""
        try:
            return _BUILD_CONFIG.validate_python(engine_config["build_config"])
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(("build_config", *map(str, err["loc"])))
            raise InputError(
                f"{field}: {err['msg']}", path=source, hint="rerun the build (--force)"
            ) from None

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


# Validates a build_config as EngineLimits; its other keys (max_num_tokens, plugin_config, ...) are ignored.
_BUILD_CONFIG = TypeAdapter(EngineLimits)
