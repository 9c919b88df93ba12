"""What lm-evaluation-harness's hub tasks weigh, for the gate's time estimate before any data is read.

The dry run states what gate.tasks will cost without downloading a data set, so the sizes of the tasks
the real job gates on are kept here: items of the test split, loglikelihood requests per item (one per
choice: lm-eval asks each choice as its own request, pipeline.gate.lm_adapter scores each one), the mean
characters of one example in the prompt (a k-shot prompt is k + 1 of them) and the tokens a generation
task may write. A task not listed is estimated once its data is local (gate.task_dir), or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

# Characters per token of English text for the Llama/Mistral-family BPE tokenizers: the usual rule of
# thumb (about 4 characters, three quarters of a word, per token). An estimate, stated as one.
CHARS_PER_TOKEN = 4.0
# lm-eval 0.4's default generation budget when a task's generation_kwargs set no max_gen_toks
# (lm_eval/models/huggingface.py, HFLM.max_gen_toks); pipeline.gate.lm_adapter uses the same default.
DEFAULT_MAX_GEN_TOKS = 256


@dataclass(frozen=True)
class TaskSize:
    items: int  # test items of the whole task (a group: over all its tasks)
    subtasks: int  # a group's tasks (lm-eval's `limit` applies to each); 1 for a single task
    smallest_subtask: int  # items of the smallest: a limit up to it takes `limit` items from each
    choices: int  # loglikelihood requests per item; 0 for a generation task
    chars_per_shot: float  # mean characters of one example (question, choices, answer) in the prompt
    max_gen_toks: int  # tokens a generation task may write per item (0: none)
    source: str


KNOWN_TASK_SIZES: dict[str, TaskSize] = {
    # 57 subjects (lm_eval/tasks/mmlu/default, 0.4.13), 14042 test items, the smallest subject 100; a
    # 5-shot prompt averages 3212.2 characters (evalscope 1.6.0's MMLU data statistics, the same
    # question / A-D choices / "Answer:" layout), so a shot is 3212.2 / 6.
    "mmlu": TaskSize(
        items=14042,
        subtasks=57,
        smallest_subtask=100,
        choices=4,
        chars_per_shot=3212.2 / 6,
        max_gen_toks=0,
        source="14042 items, 57 subjects; 5-shot prompts 3212 characters on average (evalscope 1.6.0)",
    ),
    # 1319 test items; a 4-shot chain-of-thought prompt averages 1966.87 characters (evalscope 1.6.0's
    # GSM8K statistics), so a shot is 1966.87 / 5; lm_eval/tasks/gsm8k/gsm8k.yaml sets no max_gen_toks.
    "gsm8k": TaskSize(
        items=1319,
        subtasks=1,
        smallest_subtask=1319,
        choices=0,
        chars_per_shot=1966.87 / 5,
        max_gen_toks=DEFAULT_MAX_GEN_TOKS,
        source="1319 items; 4-shot prompts 1967 characters on average (evalscope 1.6.0)",
    ),
}
