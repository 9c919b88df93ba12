"""`smoke --tasks`: gate.tasks scored against the served deployment (the real tritonserver, the
reference backend) and compared with the scores the published version's gate.json recorded.

The gated scores here are the gate's own computation (pipeline.gate.tasks.score_tasks over the
reference runtime on the published checkpoint, the unquantized tiny model for the reference side);
only the rest of gate.json, which smoke never reads, is a stand-in. lm-eval runs as installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from numerics import use_test_threads
from publish_upstream import REPO_ROOT, Upstream, config_with, run_publish
from safetensors.torch import load_file, save_file
from test_gate import engine, swap_q_and_k
from tiny_checkpoints import tiny_checkpoint

from pipeline.cli import main
from pipeline.facts.config import GateTask
from pipeline.gate import HuggingFaceModel
from pipeline.gate.report import GateResult
from pipeline.gate.tasks import score_tasks
from pipeline.gate.verdict import task_result
from pipeline.runtime.limits import EngineLimits

use_test_threads()
PROFILE = "throughput"
TASK_DIR = REPO_ROOT / "calib_data" / "tasks"
CONFIG_CHANGES = {
    'prompts = "calib_data/prompts.jsonl"': f'prompts = "{REPO_ROOT / "calib_data" / "prompts.jsonl"}"',
    'task_dir = "calib_data/tasks"': f'task_dir = "{TASK_DIR}"',
}
# The embedded tiny config's gate.tasks (pipeline/defaults/tiny.toml), as its gate scores them.
TASKS = (GateTask(name="tiny_next_word", limit=32), GateTask(name="tiny_dialogue", limit=12))
# The throughput profile's engine (tiny.toml), the limits both the gate and the server apply.
LIMITS = EngineLimits(max_batch_size=8, max_input_len=96, max_seq_len=128)
SMOKE = ["--precision", "int8_sq", "--profile", PROFILE, "--prompts", "1", "--max-tokens", "4", "--tasks"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    return tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq")


def gate_json(tiny_model_dir: Path, candidate, limits: EngineLimits, cache: Path, **names: str) -> str:
    """gate.json with `candidate`'s task scores against the unquantized model's, as the gate scores them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def scores(model):
        return score_tasks(
            model,
            tokenizer=tokenizer,
            limits=limits,
            batch_size=limits.max_batch_size,
            tasks=TASKS,
            task_dir=TASK_DIR,
            datasets_cache=cache,
        )

    reference = scores(HuggingFaceModel.load(tiny_model_dir))
    tasks = [
        task_result(r, c, min_recovery=0.95, max_drop_points=None)
        for r, c in zip(reference, scores(candidate), strict=True)
    ]
    assert {t.task: t.score for t in tasks}["tiny_dialogue"] >= 0.5  # else a broken server could match it
    return GateResult(
        verdict=True, **names, checks=[], reference_perplexity=1.0,
        candidate_perplexity=1.0, exact_greedy_matches=0, served_exact_greedy_matches=0, served_near_ties=0,
        reference_choice_accuracy=None, candidate_choice_accuracy=None, windows=0, window_len=0, prompts=0,
        max_new_tokens=0, choice_items=0, batch_size=limits.max_batch_size, data={}, tasks=tasks,
    ).model_dump_json(indent=2)  # fmt: skip


@pytest.fixture(scope="module")
def gate_report(tmp_path_factory, tiny_model_dir, checkpoint) -> str:
    """gate.json with the int8_sq checkpoint's task scores against the unquantized model's."""
    cache = tmp_path_factory.mktemp("datasets")
    return gate_json(
        tiny_model_dir, engine(checkpoint, LIMITS), LIMITS, cache, precision="int8_sq", profile=PROFILE
    )


def publish(tmp: Path, upstream: Upstream) -> Path:
    config = config_with(tmp, **CONFIG_CHANGES)
    assert [t.name for t in config.gate.tasks] == [t.name for t in TASKS]
    assert run_publish(config, tmp / "work", upstream, profile=PROFILE).error is None
    return tmp / "pipeline.toml"


def smoke(config_path: Path, *extra: str) -> list[str]:
    return [
        "smoke",
        "--config",
        str(config_path),
        "--work-dir",
        str(config_path.parent / "work"),
        *SMOKE,
        *extra,
    ]


@pytest.mark.triton
def test_a_served_deployment_scores_as_gated(tmp_path, tiny_model_dir, checkpoint, gate_report, capsys):
    config_path = publish(
        tmp_path, Upstream(tokenizer_dir=tiny_model_dir, checkpoint_dir=checkpoint, gate_report=gate_report)
    )
    code = main(smoke(config_path, "--json"))
    out = capsys.readouterr()
    assert code == 0, out.err
    gated = {t["task"]: t for t in json.loads(gate_report)["tasks"]}
    (report,) = json.loads(out.out)
    rows = {row["task"]: row for row in report["tasks"]}
    dialogue = rows["tiny_dialogue"]
    assert dialogue["ok"] and dialogue["served"] is not None and dialogue["samples"] == 12
    assert dialogue["gated"] == gated["tiny_dialogue"]["score"]
    assert abs(dialogue["served"] - dialogue["gated"]) <= dialogue["allowed"]
    # Multiple choice needs prompt log-likelihoods, which the served engine does not return: said, not faked.
    next_word = rows["tiny_next_word"]
    assert next_word["served"] is None and next_word["ok"]
    assert "not scored: it needs multiple_choice" in next_word["note"]


def swap_q_and_k_in_engine(engine_dir: Path) -> None:
    weights = engine_dir / "rank0.safetensors"
    tensors = load_file(weights)
    swap_q_and_k(tensors)
    save_file(tensors, weights)


@pytest.mark.triton
def test_a_deployment_that_answers_differently_from_the_gated_model_fails_naming_the_task(
    tmp_path, tiny_model_dir, checkpoint, gate_report, capsys
):
    """A version whose engine is not the gated one (here q and k swapped after the gate) but whose
    manifest matches its files: every smoke answer equals the reference runtime on that engine, so
    only the task scores tell it from what was gated."""
    upstream = Upstream(
        tokenizer_dir=tiny_model_dir,
        checkpoint_dir=checkpoint,
        gate_report=gate_report,
        engine_edit=swap_q_and_k_in_engine,
    )
    code = main(smoke(publish(tmp_path, upstream)))
    out = capsys.readouterr()
    assert code == 1, out.err
    error = [line for line in out.err.splitlines() if "ERROR" in line]
    assert len(error) == 1 and "task 'tiny_dialogue' (exact_match,strip, 12 items) scores" in error[0]
    assert "served against" in error[0] and "gated" in error[0]
    assert "publish afresh from a passing gate" in out.err
    assert "ok ensemble/generate" in out.out  # the answers themselves agree with the served engine
    assert "DIFFERS" in out.out and "tiny_dialogue" in out.out  # the table's row


@pytest.mark.parametrize(
    ("replacement", "message"),
    [
        (
            "limit = 6",
            "gate.tasks[1] 'tiny_dialogue': limit 6, num_fewshot None, but it was gated with limit 12",
        ),
        ('name = "tiny_other", limit = 12', "gate.tasks[1] 'tiny_other': "),
    ],
)
def test_tasks_a_version_was_not_gated_on_are_refused_before_serving(
    tmp_path, tiny_model_dir, checkpoint, gate_report, capsys, replacement, message
):
    config_path = publish(
        tmp_path, Upstream(tokenizer_dir=tiny_model_dir, checkpoint_dir=checkpoint, gate_report=gate_report)
    )
    text = config_path.read_text()
    config_path.write_text(
        text.replace(
            'name = "tiny_dialogue", limit = 12',
            replacement.replace("limit = 6", 'name = "tiny_dialogue", limit = 6'),
        )
    )
    code = main(smoke(config_path))
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    if "tiny_other" in message:
        assert "has no score for it (gated on: tiny_next_word, tiny_dialogue)" in err
    view = config_path.parent / "work" / "smoke" / "trtllm-engine" / "int8_sq" / PROFILE / "repository"
    assert not view.exists()  # refused before anything was served


def test_the_allowed_difference_is_the_gated_stderr_and_never_under_one_item():
    """lm-eval's standard error of a mean of 0/1 items is sqrt(p(1-p)/(n-1)): 0 for a perfect score."""
    from pipeline.gate.tasks import TaskScore
    from pipeline.serving.task_check import _compare

    def gated(score, stderr):
        reference = TaskScore(
            task="t", metric="acc,none", score=1.0, stderr=0.0, samples=12, num_fewshot=None, limit=12
        )
        candidate = reference.model_copy(update={"score": score, "stderr": stderr})
        return task_result(reference, candidate, min_recovery=0.5, max_drop_points=None)

    served = TaskScore(
        task="t", metric="acc,none", score=11 / 12, stderr=0.08, samples=12, num_fewshot=None, limit=12
    )
    perfect = _compare(gated(1.0, 0.0), served)
    assert perfect.allowed == pytest.approx(1 / 12) and perfect.ok  # one item may flip at a near tie
    assert not _compare(gated(1.0, 0.0), served.model_copy(update={"score": 10 / 12})).ok
    noisy = _compare(gated(0.5, 0.15), served.model_copy(update={"score": 0.62}))
    assert noisy.allowed == 0.15 and noisy.ok
    assert not _compare(gated(0.5, 0.15), served.model_copy(update={"score": 0.7})).ok


def test_a_version_without_a_gate_report_of_tasks_is_one_line(tmp_path, capsys):
    """The publish stand-in's gate.json holds a verdict only, not a gate report."""
    config_path = publish(tmp_path, Upstream())
    code = main(smoke(config_path))
    err = capsys.readouterr().err
    assert code == 2
    assert "gate.json" in err and "not a gate report" in err and "Traceback" not in err


def test_tasks_without_gate_tasks_is_one_line(tmp_path, capsys):
    config_with(tmp_path, **CONFIG_CHANGES)
    text = (tmp_path / "pipeline.toml").read_text()
    start = text.index("tasks = [")
    (tmp_path / "pipeline.toml").write_text(text[:start] + "tasks = []" + text[text.index("]", start) + 1 :])
    code = main(smoke(tmp_path / "pipeline.toml"))
    err = capsys.readouterr().err
    assert code == 2 and "gate.tasks is empty" in err


@pytest.mark.triton
@pytest.mark.slow
def test_a_pytorch_release_is_scored_through_its_trtllm_serve(tmp_path, tiny_model_dir, capsys):
    """A trtllm-pytorch release: the tasks go to its bundle's trtllm-serve (/v1/completions, greedy).
    Gated on what it serves, it passes; a gate.json whose score is not what the release serves fails,
    naming the task."""
    from publish_upstream import cpu_engine_info
    from test_pytorch_serving import OPTIONS, _as_pytorch_build

    from pipeline.backends.reference import ReferenceRunner
    from pipeline.serving.pytorch.llm import StandInLLM

    llm = StandInLLM(tiny_model_dir, OPTIONS)  # what the release's trtllm-serve runs on the CPU
    report = gate_json(
        tiny_model_dir,
        ReferenceRunner(llm.model, engine_config={}),
        llm.limits,
        tmp_path / "datasets",
        precision="int8_wo",
        profile="latency",
    )
    gated = json.loads(report)
    dialogue = next(t for t in gated["tasks"] if t["task"] == "tiny_dialogue")
    dialogue["score"] -= 0.5  # two or more items further than one item or the stderr allows
    for name, text in (("same", report), ("other", json.dumps(gated))):
        upstream = Upstream(
            tokenizer_dir=tiny_model_dir,
            gate_report=text,
            engine_info=cpu_engine_info().model_copy(update={"backend": "reference-pytorch"}),
            engine_edit=_as_pytorch_build(tiny_model_dir),
        )
        (tmp_path / name).mkdir()
        config = config_with(tmp_path / name, **CONFIG_CHANGES)
        variant = {"backend": "trtllm-pytorch", "precision": "int8_wo", "profile": "latency"}
        assert run_publish(config, tmp_path / name / "work", upstream, **variant).error is None
        argv = ["smoke", "--config", str(config.source), "--work-dir", str(tmp_path / name / "work")]
        argv += [f"--{k}={v}" for k, v in variant.items()] + [
            "--prompts",
            "1",
            "--max-tokens",
            "4",
            "--tasks",
        ]
        code = main([*argv, "--json"])
        out = capsys.readouterr()
        (smoked,) = json.loads(out.out)
        rows = {row["task"]: row for row in smoked["tasks"]}
        assert rows["tiny_dialogue"]["served"] is not None and rows["tiny_next_word"]["served"] is None
        if name == "same":
            assert code == 0, out.err
            assert rows["tiny_dialogue"]["ok"]
        else:
            assert code == 1 and not rows["tiny_dialogue"]["ok"]
            assert "task 'tiny_dialogue'" in out.err
