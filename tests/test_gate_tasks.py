"""The task gate: lm-evaluation-harness scores of the gate engine against the unquantized model.

The adapter (pipeline.gate.lm_adapter) answers lm-eval 0.4.13's LM API (lm_eval/api/model.py: LM,
TemplateLM; lm_eval/api/instance.py: Instance.args is (context, continuation) for loglikelihood and
(context, gen_kwargs) for generate_until) from the runner API, and lm-eval builds the project's tasks
from calib_data/tasks/*.yaml (`dataset_path: json`, dataset_kwargs.data_files: lm_eval/api/task.py,
ConfigurableTask.download). Nothing of lm-eval is replaced here: it runs as installed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from numerics import use_test_threads
from test_gate import CORRUPTIONS, LIMITS, MemoizedReference, _corrupt, engine
from tiny_checkpoints import tiny_checkpoint

from pipeline.core.errors import ExitCode, InputError
from pipeline.facts.config import GateSection, GateTask, Precision, _default_thresholds
from pipeline.facts.formats import FORMATS
from pipeline.facts.layout import GATE_JSON, JUNIT_XML
from pipeline.gate import HuggingFaceModel, ScoreCache, TaskGate, write_reports
from pipeline.gate.tasks import TaskScore, score_tasks
from pipeline.gate.verdict import task_result

use_test_threads()
REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "calib_data" / "tasks"
# Small subsets: the tiny model answers every item, a broken export few; 16 items tell them apart.
TASKS = (GateTask(name="tiny_next_word", limit=16), GateTask(name="tiny_dialogue", limit=6))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> GateSection:
    folder = tmp_path_factory.mktemp("gate-data")
    prompts = (REPO / "calib_data" / "prompts.jsonl").read_text().splitlines()[:4]
    (folder / "prompts.jsonl").write_text("\n".join(prompts) + "\n")
    return GateSection(
        eval_dataset=REPO / "calib_data" / "offline-eval.jsonl",
        eval_samples=4,
        eval_seq_len=64,
        prompts=folder / "prompts.jsonl",
        max_new_tokens=8,
        tasks=TASKS,
        task_dir=TASK_DIR,
    )


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path) -> MemoizedReference:
    """Loaded once for the module (the gate closes what its loader gives; this has no close)."""
    return MemoizedReference(HuggingFaceModel.load(tiny_model_dir))


@pytest.fixture(scope="module")
def reference_scores(tmp_path_factory) -> ScoreCache:
    """The unquantized model's task scores, computed by the first gate and reused by every other."""
    return ScoreCache(tmp_path_factory.mktemp("task-scores") / "reference.json")


def task_gate(
    settings: GateSection, precision: str, reference_scores: ScoreCache, tmp_path: Path
) -> TaskGate:
    return TaskGate(
        tasks=settings.tasks,
        task_dir=settings.task_dir,
        datasets_cache=tmp_path / "datasets",
        min_recovery=settings.min_task_recovery(Precision(precision)),
        max_drop_points=None,
        reference_scores=reference_scores,
    )


def gate_with_tasks(reference, checkpoint, tokenizer, settings, precision, reference_scores, tmp_path):
    from pipeline.core.reporter import RecordingReporter
    from pipeline.gate import run_gate

    candidate = engine(checkpoint)
    return run_gate(
        reference=lambda: reference,
        candidate=lambda: candidate,
        served=lambda: candidate,
        tokenizer=tokenizer,
        settings=settings,
        thresholds=_default_thresholds()[Precision(precision)],
        limits=LIMITS,
        served_limits=LIMITS,
        precision=precision,
        profile="test",
        reporter=RecordingReporter(),
        tasks=task_gate(settings, precision, reference_scores, tmp_path),
    )


def test_the_tiny_model_scores_far_above_chance_on_its_tasks(
    reference, tokenizer, reference_scores, tmp_path
):
    """Recovery against a model at chance would mean nothing: the unquantized tiny model must know
    its tasks (next word: 8 choices, chance 0.125; dialogue: an exact line, chance about 0)."""
    scores = score_tasks(
        reference,
        tokenizer=tokenizer,
        limits=LIMITS,
        batch_size=8,
        tasks=TASKS,
        task_dir=TASK_DIR,
        datasets_cache=tmp_path / "datasets",
    )
    by_task = {s.task: s for s in scores}
    assert by_task["tiny_next_word"].metric == "acc,none" and by_task["tiny_next_word"].samples == 16
    assert by_task["tiny_next_word"].score >= 0.9
    assert by_task["tiny_dialogue"].metric == "exact_match,strip" and by_task["tiny_dialogue"].samples == 6
    assert by_task["tiny_dialogue"].score >= 0.5
    reference_scores.put(scores)  # the gates below reuse them, as the stage's cache does


@pytest.mark.parametrize("precision", ["int8_sq", "int8_wo"])
def test_the_demo_formats_pass_the_task_gate(
    tmp_path, tmp_path_factory, tiny_model_dir, reference, tokenizer, settings, reference_scores, precision
):
    checkpoint = tiny_checkpoint(tmp_path_factory, tiny_model_dir, precision)
    record = gate_with_tasks(
        reference, checkpoint, tokenizer, settings, precision, reference_scores, tmp_path
    )
    assert record.verdict, record.summary
    assert [t.task for t in record.tasks] == ["tiny_next_word", "tiny_dialogue"]
    for task in record.tasks:
        assert task.passed and task.recovery >= FORMATS[Precision(precision)].gate.min_task_recovery
    # gate.json and JUnit carry each task's figures.
    write_reports(tmp_path, record)
    saved = json.loads((tmp_path / GATE_JSON).read_text())["tasks"][0]
    assert {
        "score",
        "reference_score",
        "recovery",
        "recovery_stderr",
        "stderr",
        "samples",
        "within_noise",
    } <= set(saved)
    cases = {c.get("name"): c for c in ET.parse(tmp_path / JUNIT_XML).getroot().iter("testcase")}
    properties = {p.get("name"): p.get("value") for p in cases["task:tiny_next_word"].iter("property")}
    assert properties["samples"] == "16" and float(properties["recovery"]) == record.tasks[0].recovery


@pytest.mark.parametrize("corruption", ["q and k swapped", "scales x4", "rotary base dropped"])
def test_a_corrupted_checkpoint_fails_on_task_recovery(
    tmp_path, tmp_path_factory, tiny_model_dir, reference, tokenizer, settings, reference_scores, corruption
):
    good = tiny_checkpoint(tmp_path_factory, tiny_model_dir, "int8_sq")
    bad = _corrupt(good, tmp_path / "bad", **CORRUPTIONS[corruption])
    record = gate_with_tasks(reference, bad, tokenizer, settings, "int8_sq", reference_scores, tmp_path)
    assert not record.verdict
    assert any(name.startswith("task:") for name in (c.name for c in record.failed)), record.summary


def test_the_unquantized_scores_are_computed_once(tmp_path, tokenizer):
    """A kept score is returned as kept: a model that cannot be asked anything still gets its scores."""
    cache = ScoreCache(tmp_path / "scores.json")
    kept = [
        TaskScore(task=t.name, metric="acc,none", score=1.0, stderr=0.0, samples=1, num_fewshot=None, limit=1)
        for t in TASKS
    ]
    cache.put(kept)

    class Unaskable:
        def context_logits(self, sequences):
            raise AssertionError("scored again")

        generate = context_logits

    gate = TaskGate(
        tasks=TASKS, task_dir=TASK_DIR, datasets_cache=tmp_path, min_recovery=0.99, max_drop_points=None
    )
    assert gate.scores(Unaskable(), cache, tokenizer=tokenizer, limits=LIMITS, batch_size=8) == kept


def test_recovery_its_standard_error_and_noise():
    def score(value: float, stderr: float) -> TaskScore:
        return TaskScore(
            task="t", metric="acc,none", score=value, stderr=stderr, samples=100, num_fewshot=5, limit=None
        )

    # A 1-point drop with standard errors of 2 points each: within noise, still judged by recovery.
    result = task_result(score(0.60, 0.02), score(0.59, 0.02), min_recovery=0.99, max_drop_points=None)
    assert result.within_noise and not result.passed
    assert result.recovery == pytest.approx(0.59 / 0.60)
    assert result.drop_stderr_points == pytest.approx((0.02**2 + 0.02**2) ** 0.5 * 100)
    # A 10-point drop is beyond its standard error.
    result = task_result(score(0.60, 0.02), score(0.50, 0.02), min_recovery=0.8, max_drop_points=5.0)
    assert not result.within_noise and not result.passed  # recovery 0.83 holds, the 10-point drop does not


def test_an_uncached_hub_task_offline_is_one_line_exit_2(tmp_path, tokenizer, monkeypatch, reference):
    """With HF_HUB_OFFLINE=1 a hub data set not in the work dir's cache cannot be read: one InputError."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: trtllm-pipeline-tests/not-cached\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\ndoc_to_target: 0\n"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    with pytest.raises(InputError) as err:
        score_tasks(
            reference,
            tokenizer=tokenizer,
            limits=LIMITS,
            batch_size=8,
            tasks=(GateTask(name="hub_task", revision="0" * 40),),
            task_dir=folder,
            datasets_cache=tmp_path / "datasets",
        )
    assert err.value.exit_code == ExitCode.BAD_INPUT and "\n" not in err.value.message
    assert "hub_task" in err.value.message


def test_a_task_whose_data_is_here_runs_offline(tmp_path, tokenizer, monkeypatch, reference):
    """HF_HUB_OFFLINE=1: the tiny model's own tasks read only their files, so they score as online."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (score,) = score_tasks(
        reference,
        tokenizer=tokenizer,
        limits=LIMITS,
        batch_size=8,
        tasks=(GateTask(name="tiny_next_word", limit=4),),
        task_dir=TASK_DIR,
        datasets_cache=tmp_path / "datasets",
    )
    assert score.samples == 4 and score.score > 1 / 8  # above chance: the data was read and asked


def test_a_hub_task_without_a_revision_is_refused(tmp_path, tokenizer, reference):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "hub_task.yaml").write_text("task: hub_task\ndataset_path: someone/data\n")
    with pytest.raises(InputError, match=r"gate.tasks\[0\].revision"):
        score_tasks(
            reference,
            tokenizer=tokenizer,
            limits=LIMITS,
            batch_size=8,
            tasks=(GateTask(name="hub_task"),),
            task_dir=folder,
            datasets_cache=tmp_path / "datasets",
        )


@pytest.mark.parametrize("gen_kwargs", [{"do_sample": True}, {"temperature": 0.7}])
def test_a_task_that_samples_is_refused(tokenizer, gen_kwargs):
    """A sampled score changes from run to run: recovery against it would mean nothing."""
    from types import SimpleNamespace

    from pipeline.gate.lm_adapter import RunnerLM

    class Unaskable:
        def generate(self, *args, **kwargs):
            raise AssertionError("a sampling task reached the model")

    lm = RunnerLM(Unaskable(), tokenizer, LIMITS, batch_size=2)
    request = SimpleNamespace(args=("Once upon a time", {"until": ["\n"], **gen_kwargs}))
    with pytest.raises(InputError, match="samples"):
        lm.generate_until([request])


# ---------------------------------------------------------------- the dry run's task gate (items 5, 6)


def test_the_real_jobs_dry_run_lists_the_task_gate_its_data_and_time(repo_root, tmp_path, capsys):
    """`run --config pipeline.toml --dry-run`: each task with its pinned data, its items under `limit`,
    its tokens, and a time per model scored (the unquantized model once, each gate engine once)."""
    from test_dryrun import dry_run_json

    from pipeline.facts.config import load_config
    from pipeline.facts.eval_tasks import CHARS_PER_TOKEN, KNOWN_TASK_SIZES
    from pipeline.facts.targets import TARGETS

    config = load_config(repo_root / "pipeline.toml")
    dry = dry_run_json(capsys, "--config", str(repo_root / "pipeline.toml"), "--work-dir", str(tmp_path))
    estimate = dry.task_gate
    assert estimate is not None and estimate.target == "a100-40gb"
    mmlu, gsm8k = estimate.tasks
    assert (mmlu.task, gsm8k.task) == ("mmlu", "gsm8k")
    assert config.gate.tasks[0].revision in mmlu.data and config.gate.tasks[1].revision in gsm8k.data
    # lm-eval's limit takes that many items from each of MMLU's 57 subjects; each item asks 4 choices.
    assert mmlu.items == 57 * config.gate.tasks[0].limit and mmlu.requests == 4 * mmlu.items
    assert gsm8k.items == config.gate.tasks[1].limit == gsm8k.requests
    # A 5-shot MMLU prompt is 6 examples' characters; it fits the gate engine's input, so it is not cut.
    shots = 6 * KNOWN_TASK_SIZES["mmlu"].chars_per_shot / CHARS_PER_TOKEN
    assert mmlu.prefill_tokens == mmlu.requests * -(-shots // 1) < mmlu.requests * config.gate.eval_seq_len
    assert gsm8k.generated_tokens == gsm8k.items * 256  # gsm8k.yaml sets no max_gen_toks: lm-eval's 256
    assert [m.model for m in estimate.models] == ["unquantized"] + [
        f"{backend}/{precision.value}" for backend, precision in config.variants
    ]
    # The unquantized model reads 16-bit weights at every decode step: no gate engine is slower.
    assert all(m.seconds < estimate.models[0].seconds for m in estimate.models[1:])
    assert estimate.total_s == pytest.approx(sum(m.seconds for m in estimate.models))
    # At least the prefill at the A100's FP16 peak: the floor a user reads before paying for it.
    target = TARGETS["a100-40gb"]
    floor = (
        (mmlu.prefill_tokens + gsm8k.prefill_tokens)
        * 2
        * estimate_params(config)
        / (target.fp16_tflops * 1e12)
    )
    assert estimate.models[0].seconds > floor
    # What README.md and pipeline.toml's comment state of it.
    minutes = [m.seconds / 60 for m in estimate.models]
    assert (round(min(minutes), 1), round(max(minutes), 1), round(estimate.total_s / 60)) == (3.3, 4.2, 18)


def estimate_params(config) -> int:
    from pipeline.planning.memory import find_architecture

    return find_architecture(config).params


def test_a_larger_limit_costs_proportionally_more_and_the_text_dry_run_prints_it(repo_root, tmp_path, capsys):
    from pipeline.cli import main

    text = (repo_root / "pipeline.toml").read_text()
    assert "limit = 20\n" in text
    config = tmp_path / "larger-limit.toml"
    config.write_text(
        text.replace("limit = 20\n", "limit = 40\n").replace('"calib_data/', f'"{repo_root}/calib_data/')
    )
    args = ["run", "--dry-run", "--work-dir", str(tmp_path / "w")]
    assert main([*args, "--json", "--config", str(repo_root / "pipeline.toml")]) == 0
    small = json.loads(capsys.readouterr().out)["task_gate"]["tasks"][0]
    assert main([*args, "--json", "--config", str(config)]) == 0
    large = json.loads(capsys.readouterr().out)["task_gate"]["tasks"][0]
    assert main([*args, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert large["prefill_tokens"] == 2 * small["prefill_tokens"]
    assert "task gate (lm-evaluation-harness) on a100-40gb:" in out
    assert "mmlu: hub data set of lm-eval's 'mmlu' @ c30699e8356da336a370243923dbaf21066bb9fe" in out
    assert "2,280 items" in out and "total: " in out and "min" in out


def test_the_demos_dry_run_sizes_its_own_tasks_from_their_files(in_repo_root, tmp_path, capsys):
    from test_dryrun import dry_run_json

    dry = dry_run_json(capsys, "--work-dir", str(tmp_path))
    assert dry.task_gate is not None
    by_task = {t.task: t for t in dry.task_gate.tasks}
    assert by_task["tiny_next_word"].data.endswith("calib_data/tasks/tiny_next_word.jsonl")
    # The embedded default's limits (32, 12) and the files' own items: 8 choices, a 24-token answer.
    assert (by_task["tiny_next_word"].items, by_task["tiny_next_word"].requests) == (32, 32 * 8)
    assert (by_task["tiny_dialogue"].items, by_task["tiny_dialogue"].generated_tokens) == (12, 12 * 24)
    assert dry.task_gate.total_s is not None


def test_the_dry_run_times_only_the_gate_engines_the_request_selects(repo_root, tmp_path, capsys):
    from test_dryrun import dry_run_json

    args = ["--config", str(repo_root / "pipeline.toml"), "--work-dir", str(tmp_path)]
    everything = dry_run_json(capsys, *args).task_gate
    one = dry_run_json(capsys, *args, "--backend", "trtllm-engine", "--precision", "int8_wo").task_gate
    assert [m.model for m in one.models] == ["unquantized", "trtllm-engine/int8_wo"]
    assert one.models == [everything.models[0], everything.models[2]]
    assert one.total_s == pytest.approx(everything.models[0].seconds + everything.models[2].seconds)
    # A run that gates nothing has no task gate to time.
    from pipeline.commands.dryrun import dry_run
    from pipeline.commands.run import RunRequest
    from pipeline.facts.config import load_config

    config = load_config(repo_root / "pipeline.toml")
    assert dry_run(config, tmp_path, RunRequest(stages=frozenset({"build"}))).task_gate is None


def test_the_unquantized_scores_are_keyed_by_the_model_and_task_set_not_the_precision(in_repo_root, tmp_path):
    """The stage keys the unquantized scores by the fetched model and the tasks, so every precision's
    gate finds those of the first; a gate engine's are its own, and another task set scores again."""
    from types import SimpleNamespace

    from pipeline.facts.config import load_config
    from pipeline.stages.gate import Gate

    config = load_config(None)  # the demo's: its own tasks
    assert config.gate.tasks

    def keyed(precision: str, engine_key: str, config=config) -> TaskGate:
        ctx = SimpleNamespace(
            config=config,
            precision=Precision(precision),
            work_dir=tmp_path,
            inputs={"fetch": SimpleNamespace(key="fetched"), "gate_engine": SimpleNamespace(key=engine_key)},
        )
        return Gate()._task_gate(ctx, LIMITS)

    int8_sq, int8_wo = keyed("int8_sq", "engine-a"), keyed("int8_wo", "engine-b")
    assert int8_sq.reference_scores == int8_wo.reference_scores
    assert int8_sq.candidate_scores != int8_wo.candidate_scores
    fewer = config.model_copy(
        update={"gate": config.gate.model_copy(update={"tasks": config.gate.tasks[:1]})}
    )
    assert keyed("int8_sq", "engine-a", fewer).reference_scores != int8_sq.reference_scores
