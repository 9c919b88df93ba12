"""The project's runners as an lm-evaluation-harness model, so lm-eval scores the tasks.

lm-eval 0.4.x asks a model three things (lm_eval/api/model.py, class LM): `loglikelihood` of a
continuation after a context, `loglikelihood_rolling` of a whole text, and `generate_until` a stop
string. `RunnerLM` answers all three from the runner API alone (context_logits, generate), so the
unquantized Hugging Face model (pipeline.gate.evaluate.HuggingFaceModel), the reference runtime and a
TensorRT-LLM gate engine are scored by the same code: the only difference between two scores is the
model. Tokenizing a (context, continuation) pair is lm-eval's own (TemplateLM._encode_pair).
`TokenizerLM` holds what does not depend on where the model runs (tokens, greedy generation cut at
the stop strings), so a served deployment is scored by the same code (pipeline.serving.task_check).

Both sides are given the gate engine's limits: a request longer than the engine takes keeps its end
(what is scored or continued), the same on both sides, and at most `batch_size` sequences are in
flight at once.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from pipeline.core.errors import InputError
from pipeline.facts.eval_tasks import DEFAULT_MAX_GEN_TOKS
from pipeline.runtime.limits import EngineLimits

if TYPE_CHECKING:
    from pipeline.gate.evaluate import LanguageModel


class TokenizerLM(TemplateLM):
    """What every model scored here shares: the tokenizer, the engine's limits, and greedy generation
    cut at the stop strings. A subclass says how a group of contexts is continued (`_continue`)."""

    def __init__(self, tokenizer: Any, limits: EngineLimits, *, batch_size: int) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.limits = limits
        self.batch_size = max(1, min(batch_size, limits.max_batch_size))

    # --- tokens -------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        # None: the tokenizer's own habit (a BOS first for Mistral), as the model was trained.
        options = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer(string, **options)["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    # --- generation ---------------------------------------------------------------------------

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut before the first stop string (the gate compares greedy outputs
        only: a sampled score would differ between two runs of the same model)."""
        args = [request.args for request in requests]
        out: list[str] = [""] * len(args)
        for start in range(0, len(args), self.batch_size):
            budgets: dict[int, list[int]] = {}  # one generate call per max_new_tokens
            for i in range(start, min(start + self.batch_size, len(args))):
                budgets.setdefault(self._budget(args[i][1]), []).append(i)
            for max_new, indices in budgets.items():
                texts = self._continue([args[i][0] for i in indices], max_new)
                for i, text in zip(indices, texts, strict=True):
                    out[i] = _cut(text, args[i][1].get("until"))
        return out

    @abstractmethod
    def _continue(self, contexts: list[str], max_new: int) -> list[str]:
        """Each context's greedy continuation of at most max_new tokens, as text."""

    def _budget(self, gen_kwargs: dict[str, Any]) -> int:
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0.0) > 0:
            raise InputError(
                "a gate task samples (do_sample, or temperature > 0): its score would change from run to run",
                hint="gate only on tasks that decode greedily",
            )
        return min(int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)), self.limits.max_seq_len - 1)


class RunnerLM(TokenizerLM):
    """A runner in this process: loglikelihood from its context logits, generation from its generate."""

    def __init__(
        self, model: LanguageModel, tokenizer: Any, limits: EngineLimits, *, batch_size: int
    ) -> None:
        super().__init__(tokenizer, limits, batch_size=batch_size)
        self.model = model

    # --- scoring ------------------------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, whether it is the greedy one) per request."""
        window = self.limits.max_input_len
        inputs, counts = [], []
        for (context, _), context_enc, continuation_enc in requests:
            if len(continuation_enc) > window:
                raise InputError(
                    f"a {len(continuation_enc)}-token continuation exceeds the gate engine's "
                    f"max_input_len ({window}): {context[:40]!r}...",
                    hint="raise gate.eval_seq_len or drop the task",
                )
            # Scored positions predict the next token: the last one is never an input.
            inputs.append((context_enc + continuation_enc)[-(window + 1) : -1])
            counts.append(len(continuation_enc))
        out: list[tuple[float, bool]] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start : start + self.batch_size]
            for i, logits in enumerate(self.model.context_logits(batch), start=start):
                targets = torch.tensor(requests[i][2], dtype=torch.long)
                scored = torch.log_softmax(logits[-counts[i] :].float(), dim=-1)
                logprob = float(scored.gather(-1, targets[:, None]).sum())
                out.append((logprob, bool((scored.argmax(-1) == targets).all())))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, in disjoint windows the engine takes."""
        out = []
        for (text,) in (request.args for request in requests):
            windows = [
                make_disjoint_window(pair)
                for pair in get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.limits.max_input_len,
                    context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(("", ""), ctx, cont) for ctx, cont in windows])
            out.append(sum(logprob for logprob, _ in scores))
        return out

    def _continue(self, contexts: list[str], max_new: int) -> list[str]:
        prompts = [self._fit_prompt(context, max_new) for context in contexts]
        generated = self.model.generate(prompts, max_new_tokens=max_new, end_id=self.eot_token_id)
        return [self.tok_decode(tokens) for tokens in generated]

    def _fit_prompt(self, context: str, max_new: int) -> list[int]:
        room = min(self.limits.max_input_len, self.limits.max_seq_len - max_new)
        return self.tok_encode(context)[-room:]


def _cut(text: str, until: str | list[str] | None) -> str:
    """The text before the earliest stop string."""
    stops = [until] if isinstance(until, str) else (until or [])
    ends = [text.find(stop) for stop in stops if stop and stop in text]
    return text[: min(ends)] if ends else text
