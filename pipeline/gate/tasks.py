"""gate.tasks: one model's lm-evaluation-harness scores (task accuracy, its standard error, items).

    scores = score_tasks(model, tokenizer=..., limits=..., batch_size=..., tasks=config.gate.tasks,
                         task_dir=config.gate.task_dir, datasets_cache=work_dir / "datasets")

lm-eval builds each task, asks the model through `RunnerLM` and computes the metric and its standard
error (lm_eval.evaluator.simple_evaluate). Two kinds of task:
- the project's own (gate.task_dir): a YAML with `dataset_path: json` over a JSONL beside it; the
  JSONL's path is made absolute here, and both files' sha256 are part of the gate's key (task_inputs);
- lm-eval's (mmlu, gsm8k, ...): a hub data set read through the datasets library at the pinned
  `revision` into the work dir's cache; with HF_HUB_OFFLINE=1 a task not cached there is an InputError.

Nothing here reads the environment at import; lm-eval itself is imported when a task is scored.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from pipeline.core.atomic import write_bytes_atomic
from pipeline.core.errors import InputError, MissingDependencyError
from pipeline.core.hashing import fingerprint_key, sha256_file
from pipeline.facts.config import GateTask
from pipeline.facts.eval_tasks import DEFAULT_MAX_GEN_TOKS, KNOWN_TASK_SIZES, TaskSize
from pipeline.runtime.limits import EngineLimits

if TYPE_CHECKING:
    from pipeline.gate.evaluate import LanguageModel

# Metrics whose standard error lm-eval computes by bootstrap (the means, acc and exact_match, have a
# closed form): enough resamples for two significant digits of a standard error.
BOOTSTRAP_ITERS = 1000
INSTALL_HINT = "pip install 'trtllm-pipeline[eval]' (lm-evaluation-harness), or remove gate.tasks"


class TaskScore(BaseModel):
    """One model's score on one gate task."""

    task: str
    metric: str  # lm-eval's "<metric>,<filter>" key
    score: float  # in [0, 1] for accuracy-like metrics
    stderr: float  # lm-eval's standard error of the score
    samples: int  # items scored (over a group's tasks)
    num_fewshot: int | None
    limit: int | None


def local_tasks(task_dir: Path | None) -> dict[str, Path]:
    """The tasks defined in task_dir: task name -> its YAML."""
    if task_dir is None:
        return {}
    found = {}
    for path in sorted(task_dir.glob("*.yaml")):
        spec = _read_yaml(path)
        if isinstance(spec.get("task"), str):
            found[spec["task"]] = path
    return found


def task_inputs(tasks: tuple[GateTask, ...], task_dir: Path | None) -> dict[str, dict[str, str | None]]:
    """What each task's data is, for the gate's key: the files of a local task by sha256, a hub
    task's pinned revision."""
    local = local_tasks(task_dir)
    out: dict[str, dict[str, str | None]] = {}
    for task in tasks:
        if task.name in local and _reads_jsonl(local[task.name]):
            yaml_path = local[task.name]
            out[task.name] = {
                path.name: sha256_file(path) for path in (yaml_path, *_data_files(yaml_path).values())
            }
        else:
            out[task.name] = {"revision": task.revision}
    return out


def describe_data(task: GateTask, task_dir: Path | None) -> str:
    """Where a task's data comes from, in one phrase (the dry run)."""
    local = local_tasks(task_dir)
    if task.name in local and _reads_jsonl(local[task.name]):
        return ", ".join(str(p) for p in _data_files(local[task.name]).values())
    return f"hub data set of lm-eval's '{task.name}' @ {task.revision or 'UNPINNED'}"


def task_size(task: GateTask, task_dir: Path | None) -> TaskSize | None:
    """What `task` weighs (pipeline.facts.eval_tasks): a local task's from its JSONL (the field its
    `doc_to_text` names, the list its `doc_to_choice` names), a hub task's from the known sizes; None
    when neither is known before its data is read."""
    local = local_tasks(task_dir)
    if not (task.name in local and _reads_jsonl(local[task.name])):
        return KNOWN_TASK_SIZES.get(task.name)
    spec = _read_yaml(local[task.name])
    records = [json.loads(line) for path in _data_files(local[task.name]).values() for line in _lines(path)]
    text, choice = _template_field(spec.get("doc_to_text")), _template_field(spec.get("doc_to_choice"))
    multiple_choice = spec.get("output_type") == "multiple_choice"
    chars = [len(str(r.get(text) if text else json.dumps(r))) for r in records] or [0]
    choices = [len(r[choice]) if choice and isinstance(r.get(choice), list) else 1 for r in records] or [1]
    generation = spec.get("generation_kwargs") or {}
    return TaskSize(
        items=len(records),
        subtasks=1,
        smallest_subtask=len(records),
        choices=max(choices) if multiple_choice else 0,
        chars_per_shot=sum(chars) / len(chars),
        max_gen_toks=0 if multiple_choice else int(generation.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
        source=f"{len(records)} items in {local[task.name].parent.name}/, their '{text or 'records'}' measured",
    )


def _template_field(template: Any) -> str | None:
    """The record field a plain `{{field}}` template names (None: any other template)."""
    match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", template) if isinstance(template, str) else None
    return match.group(1) if match else None


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"gate.tasks needs lm-evaluation-harness 0.4 ({exc.name} is missing)", hint=INSTALL_HINT
        ) from None


def score_tasks(
    model: LanguageModel,
    *,
    tokenizer: Any,
    limits: EngineLimits,
    batch_size: int,
    tasks: tuple[GateTask, ...],
    task_dir: Path | None,
    datasets_cache: Path,
    log: logging.Logger | None = None,
) -> list[TaskScore]:
    """The model's score on each task, computed by lm-evaluation-harness."""
    require_lm_eval()
    from pipeline.gate.lm_adapter import RunnerLM

    lm = RunnerLM(model, tokenizer, limits, batch_size=batch_size)
    scored = evaluate_tasks(lm, tasks=tasks, task_dir=task_dir, datasets_cache=datasets_cache, log=log)
    return [s for s in scored if isinstance(s, TaskScore)]  # RunnerLM answers every output type


@dataclass(frozen=True)
class Unscored:
    """A task the model could not be asked: it needs an output type the model does not give."""

    task: str
    output_types: tuple[str, ...]


ALL_OUTPUT_TYPES = frozenset({"loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until"})


def evaluate_tasks(
    lm: Any,
    *,
    tasks: tuple[GateTask, ...],
    task_dir: Path | None,
    datasets_cache: Path,
    answers: frozenset[str] = ALL_OUTPUT_TYPES,
    log: logging.Logger | None = None,
) -> list[TaskScore | Unscored]:
    """`lm`'s score on each task (an lm-eval LM); a task of an output type outside `answers` is
    Unscored rather than asked."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    local = local_tasks(task_dir)
    # Indexing lm-eval's own ~15k task YAMLs takes half a minute: only when a task needs them.
    manager = TaskManager(
        include_path=str(task_dir) if local else None,
        include_defaults=any(task.name not in local for task in tasks),
    )
    scores: list[TaskScore | Unscored] = []
    for i, task in enumerate(tasks):
        if log is not None:
            log.info("task %s: %s", task.name, describe_data(task, task_dir))
        try:
            built = _build_task(i, task, local, datasets_cache, manager)
            needs = _output_types(built)
            if not needs <= answers:
                scores.append(Unscored(task.name, tuple(sorted(needs - answers))))
                continue
            results = simple_evaluate(
                model=lm,
                tasks=[built],
                num_fewshot=task.num_fewshot,
                limit=task.limit,
                task_manager=manager,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
            )
        except InputError:
            raise
        except (ConnectionError, FileNotFoundError, OSError, ValueError) as exc:
            raise _data_error(i, task, exc) from None
        scores.append(_score(task, results))
    return scores


def _output_types(built: Any) -> set[str]:
    """The output types a built task (a Task, a Group, or a tag's list of Tasks) asks the model for."""
    from lm_eval.api.group import Group

    leaves = built if isinstance(built, list) else [built]
    leaves = [t for leaf in leaves for t in (leaf.get_all_tasks() if isinstance(leaf, Group) else [leaf])]
    return {t.OUTPUT_TYPE for t in leaves}


def _build_task(i: int, task: GateTask, local: dict[str, Path], datasets_cache: Path, manager: Any) -> Any:
    """lm-eval's Task (or Group) for `task`, built with its data's overrides.

    A task reads its data when it is built, so the overrides must reach the build: lm-eval 0.4.13's
    TaskManager passes a registered name's overrides only through its TaskFactory (a dict spec is
    taken as a new inline task: lm_eval/tasks/manager.py, TaskManager._load_spec), which applies them
    to the task or to every task of a group (lm_eval/tasks/_factory.py, TaskFactory._build_group).
    """
    entry = manager.task_index.get(task.name)
    if task.name in local and _reads_jsonl(local[task.name]):
        files = {split: str(path) for split, path in _data_files(local[task.name]).items()}
        overrides: dict[str, Any] = {
            "dataset_kwargs": {"data_files": files, "cache_dir": str(datasets_cache)}
        }
    elif entry is not None:
        if task.revision is None:
            raise InputError(
                f"gate.tasks[{i}].revision: '{task.name}' reads a hub data set: pin its commit",
                hint="set revision to the data set's 40-hex commit (huggingface.co/datasets/<id>/commits)",
            )
        overrides = {"dataset_kwargs": {"revision": task.revision, "cache_dir": str(datasets_cache)}}
    if entry is None:
        raise InputError(
            f"gate.tasks[{i}].name: '{task.name}' is neither an lm-eval task nor one of gate.task_dir's",
            hint="`lm-eval ls tasks` lists lm-eval's; a YAML in gate.task_dir adds one",
        )
    return manager._factory.build(entry, overrides=overrides, registry=manager.task_index)


def _score(task: GateTask, results: dict[str, Any] | None) -> TaskScore:
    assert results is not None  # simple_evaluate returns None only on ranks other than 0
    row = results["results"][task.name]
    # Metrics are keyed "<metric>,<filter>" beside their "<metric>_stderr,<filter>" (and names, aliases).
    reported = [k for k in row if "," in k and "_stderr," not in k]
    metric = task.metric or reported[0]
    if metric not in reported:
        known = ", ".join(reported)
        raise InputError(f"task '{task.name}' reports no metric '{metric}'; it reports {known}")
    name, _, filter_name = metric.partition(",")
    stderr = row.get(f"{name}_stderr,{filter_name}")
    leaves = results.get("group_subtasks", {}).get(task.name) or [task.name]
    samples = sum(int(results["n-samples"][leaf]["effective"]) for leaf in _leaves(leaves, results))
    return TaskScore(
        task=task.name,
        metric=metric,
        score=float(row[metric]),
        # lm-eval writes "N/A" where it has no standard error (a single item).
        stderr=float(stderr) if isinstance(stderr, int | float) else 0.0,
        samples=samples,
        num_fewshot=task.num_fewshot,
        limit=task.limit,
    )


def _leaves(names: list[str], results: dict[str, Any]) -> list[str]:
    groups = results.get("group_subtasks", {})
    out: list[str] = []
    for name in names:
        out += _leaves(groups[name], results) if name in groups and groups[name] else [name]
    return out


def _data_error(i: int, task: GateTask, exc: Exception) -> InputError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(
        f"gate.tasks[{i}] '{task.name}': its data set could not be read ({type(exc).__name__}: {first[:200]})",
        hint="with HF_HUB_OFFLINE=1, run once online to cache it in the work dir",
    )


def _read_yaml(path: Path) -> dict[str, Any]:
    class _Loader(yaml.SafeLoader):
        pass

    # lm-eval's `!function module.name` tags name Python code: the index needs only the task's name.
    _Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise InputError(f"not a task YAML: {exc}", path=path) from None
    return spec if isinstance(spec, dict) else {}


def _reads_jsonl(yaml_path: Path) -> bool:
    return _read_yaml(yaml_path).get("dataset_path") == "json"


def _data_files(yaml_path: Path) -> dict[str, Path]:
    """A local task's JSONL files by split, resolved against the YAML's folder."""
    spec = _read_yaml(yaml_path)
    files = (spec.get("dataset_kwargs") or {}).get("data_files")
    if not isinstance(files, dict) or not files:
        raise InputError(
            "a JSONL task must name its files beside it: dataset_kwargs.data_files: {split: file}",
            path=yaml_path,
        )
    resolved = {split: yaml_path.parent / name for split, name in files.items()}
    for path in resolved.values():
        if not path.is_file():
            raise InputError("task data file not found", path=path, hint=f"named by {yaml_path}")
    return resolved


@dataclass(frozen=True)
class ScoreCache:
    """One model's scores on one task set, kept in the work dir under a key of everything they
    depend on (the model's artifact, the tasks and their data, the limits, lm-eval's version): the
    unquantized model's are computed once and reused by every precision, a gate engine's by every
    profile. Correct without a lock: two writers write the same bytes, each atomically."""

    path: Path | None  # None: nothing kept

    @classmethod
    def keyed(cls, folder: Path, inputs: dict[str, Any]) -> ScoreCache:
        return cls(folder / f"{fingerprint_key(inputs)}.json")

    def get(self) -> list[TaskScore] | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            return _SCORES.validate_json(self.path.read_bytes())
        except ValidationError:
            return None  # a torn or foreign file: score again

    def put(self, scores: list[TaskScore]) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self.path, _SCORES.dump_json(scores, indent=2))


_SCORES = TypeAdapter(list[TaskScore])


@dataclass(frozen=True)
class TaskGate:
    """What the gate needs to score gate.tasks on both sides and judge them."""

    tasks: tuple[GateTask, ...]
    task_dir: Path | None
    datasets_cache: Path
    min_recovery: float
    max_drop_points: float | None
    reference_scores: ScoreCache = ScoreCache(None)
    candidate_scores: ScoreCache = ScoreCache(None)

    def scores(
        self,
        model: LanguageModel,
        cache: ScoreCache,
        *,
        tokenizer: Any,
        limits: EngineLimits,
        batch_size: int,
    ) -> list[TaskScore]:
        kept = cache.get()
        if kept is not None and [s.task for s in kept] == [t.name for t in self.tasks]:
            return kept
        scores = score_tasks(
            model,
            tokenizer=tokenizer,
            limits=limits,
            batch_size=batch_size,
            tasks=self.tasks,
            task_dir=self.task_dir,
            datasets_cache=self.datasets_cache,
        )
        cache.put(scores)
        return scores
