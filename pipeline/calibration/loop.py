"""The calibration forward loop: batched, with a progress bar, halving the batch on out-of-memory.

Max calibration takes the running maximum of what it sees, so re-running a
batch that failed half-way through (some layers already observed it) leaves the
statistics exactly as one clean pass would.

The failed step's memory is released only after the `except` block is left:
inside it the exception's traceback still references the frames that hold the
step's activations, so `torch.cuda.empty_cache()` there returns nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.calibration.records import BatchBackoff
from pipeline.core.errors import StageError
from pipeline.core.reporter import Reporter

# forward(model, input_ids, attention_mask): the one call that can run out of memory.
Forward = Callable[[Any, Any, Any], None]


def model_forward(model: Any, input_ids: Any, attention_mask: Any) -> None:
    model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)


# What an allocation failure says when it is not torch.OutOfMemoryError: the CPU allocator's
# RuntimeError, a CUDA runtime error outside the caching allocator (torch.AcceleratorError,
# "CUDA error: out of memory"), and cuBLAS failing to get its workspace (cublasCreate).
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED")


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OUT_OF_MEMORY_MESSAGES)


def release_memory() -> None:
    """Free what a failed step left: collect its now unreferenced tensors, return cached blocks to CUDA."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class LoopResult:
    final_batch_size: int
    tokens: int = 0
    backoffs: list[BatchBackoff] = field(default_factory=list)


def collate(samples: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """Right-padded input_ids and the attention mask that hides the padding."""
    import torch

    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, sample in enumerate(samples):
        ids[row, : len(sample)] = torch.tensor(sample, dtype=torch.long)
        mask[row, : len(sample)] = 1
    return ids.to(device), mask.to(device)


class CalibrationLoop:
    """A ModelOpt forward_loop over token samples. Longest samples go first so an
    out-of-memory error shows up on the first batch, not after minutes of work."""

    def __init__(
        self,
        samples: list[list[int]],
        *,
        batch_size: int,
        pad_id: int,
        device: Any,
        reporter: Reporter,
        log: logging.Logger,
        forward: Forward = model_forward,
    ) -> None:
        self.samples = sorted(samples, key=len, reverse=True)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.device = device
        self.reporter = reporter
        self.log = log
        self.forward = forward
        self.result = LoopResult(final_batch_size=batch_size)
        # ModelOpt's prints are redirected to the log around quantize(); the progress bar
        # must still reach the terminal the loop was created for.
        self._stdout = sys.stdout

    def __call__(self, model: Any) -> None:
        import torch

        result = self.result
        with (
            contextlib.redirect_stdout(self._stdout),
            torch.no_grad(),
            self.reporter.progress("calibrating", len(self.samples), "seq") as advance,
        ):
            start = 0
            while start < len(self.samples):
                batch = self.samples[start : start + result.final_batch_size]
                ids, mask = collate(batch, self.pad_id, self.device)
                failure: str | None = None
                try:
                    self.forward(model, ids, mask)
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    # Keep only its text: the exception's traceback pins the step's activations.
                    failure = f"{type(exc).__name__}: {exc}"
                if failure is not None:
                    del ids, mask
                    release_memory()
                    self._back_off(start, failure)
                    continue
                start += len(batch)
                result.tokens += sum(len(s) for s in batch)
                advance(len(batch))

    def _back_off(self, start: int, failure: str) -> None:
        old = self.result.final_batch_size
        if old == 1:
            raise StageError(
                "calibrate",
                f"out of memory at calibration batch size 1 ({failure.split(':')[0]})",
                hint="lower calibration.seq_len, or calibrate on a GPU with more memory",
            )
        new = old // 2
        self.result.final_batch_size = new
        self.result.backoffs.append(BatchBackoff(at_sample=start, from_batch=old, to_batch=new))
        message = f"out of memory at calibration batch size {old}: retrying with batch size {new}"
        self.reporter.warn(message)
        self.log.warning("%s (%s)", message, failure)
