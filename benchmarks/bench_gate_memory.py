"""Host memory the gate needs to score one batch of context logits: chunked scoring against a whole
float32 log-softmax (what the gate did before), each in a fresh process, VmHWM above the fp16 logits.

The batch is gate-sized and Mistral-shaped (vocab 32768, 1024-token windows); a whole log-softmax grows
with batch x length x vocab x 8 B, chunked scoring with one slice of SCORE_CHUNK_POSITIONS rows.
"""

from __future__ import annotations

import subprocess
import sys

BATCH, LENGTH, VOCAB = 4, 1024, 32768

CODE = """
import re, sys, torch
from pipeline.gate.metrics import token_scores
torch.set_num_threads(1)
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
batch, length, vocab = (int(v) for v in sys.argv[2:5])
logits = torch.randn(batch, length, vocab, dtype=torch.float16)
ids = torch.randint(0, vocab, (batch, length))
open("/proc/self/clear_refs", "w").write("5")
base = hwm()
if sys.argv[1] == "whole":
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
else:
    scores = [token_scores(logits[i], ids[i].tolist()) for i in range(batch)]
print(hwm() - base)
"""


def _peak_mib(mode: str) -> int:
    argv = [sys.executable, "-c", CODE, mode, str(BATCH), str(LENGTH), str(VOCAB)]
    return int(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip())


def main() -> None:
    if not sys.platform.startswith("linux"):
        print("skipped: needs /proc (Linux)")
        return
    whole, chunked = _peak_mib("whole"), _peak_mib("chunked")
    print(
        f"scoring {BATCH} x {LENGTH} x {VOCAB} fp16 context logits on the host: whole float32 log-softmax "
        f"{whole} MiB above the logits, chunked token_scores {chunked} MiB"
    )
