"""The executor's parts that need no cluster: the scheduler on toy graphs, what a task asks of a node,
the event stream, and the local executor needing no Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fake_stages import fake_stages
from publish_upstream import CPU_TARGET, ENGINE_ONLY
from test_store import config_with

from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute
from pipeline.execution.events import EventPrinter, EventReporter
from pipeline.execution.resources import TaskResources, task_resources, unplaceable
from pipeline.execution.results import TaskState
from pipeline.execution.scheduler import Schedule
from pipeline.facts.config import load_config
from pipeline.planning.tasks import Task, plan_tasks

# a -> b -> d, a -> c -> d, c -> e
A = Task("a")
B = Task("b", inputs=(A,))
C = Task("c", inputs=(A,))
D = Task("d", inputs=(B, C))
E = Task("e", inputs=(C,))
GRAPH = [A, B, C, D, E]


def test_a_task_is_ready_once_every_input_passed_and_only_then():
    schedule = Schedule(GRAPH)
    assert schedule.ready() == [A]
    schedule.start(A)
    assert schedule.ready() == []  # a started task is not ready again
    schedule.passed(A)
    assert schedule.ready() == [B, C]  # both at once: they wait only on their own inputs
    schedule.start(B)
    schedule.start(C)
    schedule.passed(C)
    assert schedule.ready() == [E]  # d still waits on b
    schedule.passed(B)
    assert schedule.ready() == [D, E]


def test_a_stopped_task_blocks_everything_below_it_and_nothing_else():
    schedule = Schedule(GRAPH)
    for task in (A, B, C):
        schedule.start(task)
    schedule.passed(A)
    schedule.passed(B)
    schedule.stopped(C)  # a rejected gate, say
    assert schedule.ready() == []
    assert schedule.blocked() == [(D, C), (E, C)]


def test_a_blocked_task_blocks_its_own_dependents_naming_the_blocked_one():
    f = Task("f", inputs=(E,))
    schedule = Schedule([*GRAPH, f])
    schedule.start(A)
    schedule.passed(A)
    schedule.start(C)
    schedule.stopped(C)
    assert (f, E) in schedule.blocked()


def test_after_halt_nothing_more_starts():
    schedule = Schedule(GRAPH)
    schedule.start(A)
    schedule.passed(A)
    schedule.halt()
    assert schedule.ready() == []


def test_a_task_cannot_start_twice():
    schedule = Schedule(GRAPH)
    schedule.start(A)
    with pytest.raises(AssertionError):
        schedule.start(A)


# --- resources -------------------------------------------------------------------------------------


def _config(tmp_path, gpu: str, precisions: str = '["int8_sq"]'):
    return config_with(
        tmp_path,
        **{
            CPU_TARGET: f'gpu = "{gpu}"\n',
            **ENGINE_ONLY,
            'precisions = ["int8_sq", "int8_wo"]': f"precisions = {precisions}",
        },
    )


def test_on_a_gpu_target_what_builds_or_runs_an_engine_asks_for_a_gpu_of_that_type(tmp_path):
    config = _config(tmp_path, "a100-40gb")
    by_stage = {t.stage: task_resources(config, t) for t in plan_tasks(config)}
    for stage in ("build", "gate_engine", "gate"):
        assert by_stage[stage].demand() == {"CPU": 1, "GPU": 1, "accelerator_type:A100": 0.001}
    assert by_stage["calibrate"].demand() == {"CPU": 1, "GPU": 1}  # any GPU: the checkpoint is the same
    assert by_stage["fetch"].demand() == by_stage["publish"].demand() == {"CPU": 1}


@pytest.mark.parametrize(
    "gpu, label", [("h100-80gb", "H100"), ("l4", "L4"), ("a10g", "A10G"), ("a100-80gb", "A100-80G")]
)
def test_each_gpu_target_asks_for_rays_label_of_its_gpu(tmp_path, gpu, label):
    config = _config(tmp_path, gpu, precisions='["int8_wo"]')
    build = next(t for t in plan_tasks(config) if t.stage == "build")
    assert task_resources(config, build).accelerator_type == label


def test_on_cpu_reference_every_task_asks_for_one_cpu(tmp_path):
    config = config_with(tmp_path)
    assert {task_resources(config, t).demand()["CPU"] for t in plan_tasks(config)} == {1}
    assert all(task_resources(config, t).demand() == {"CPU": 1} for t in plan_tasks(config))


def test_a_task_no_node_can_take_is_named_by_the_resource_it_lacks():
    a100 = TaskResources(cpus=1, gpus=1, accelerator_type="A100")
    nodes = [{"CPU": 8.0}, {"CPU": 8.0, "GPU": 8.0, "accelerator_type:H100": 1.0}]
    problem = unplaceable(a100, nodes)
    assert problem is not None and problem.endswith("has accelerator_type:A100")
    assert "1 CPU, 1 GPU, accelerator_type:A100" in problem and "2 alive" in problem
    assert unplaceable(a100, [*nodes, {"CPU": 1.0, "GPU": 1.0, "accelerator_type:A100": 1.0}]) is None
    assert unplaceable(TaskResources(cpus=4), [{"CPU": 2.0}]).endswith("has 4 CPU")
    assert unplaceable(TaskResources(), []) == "the Ray cluster has no live node"


# --- events ----------------------------------------------------------------------------------------


def test_a_stages_reporter_calls_reach_the_drivers_reporter_as_events():
    seen = []
    console = RecordingReporter()
    printer = EventPrinter(console)
    reporter = EventReporter("build[x/y]", lambda event: (seen.append(event), printer(event)))
    reporter.info("hello")
    reporter.warn("careful")
    with reporter.progress("copy", total=10, unit="B") as advance:
        advance(4)
        advance(6)
    assert console.messages == [("info", "hello"), ("warn", "careful")]
    assert console.advanced == {"copy": 10}
    assert printer.warnings == {"build[x/y]": ["careful"]}
    assert [type(e).__name__ for e in seen] == [
        "Message", "Message", "ProgressOpened", "ProgressAdvanced", "ProgressAdvanced", "ProgressClosed",
    ]  # fmt: skip


def test_bars_a_dead_worker_left_open_are_closed_by_the_driver():
    closed = []

    class Console(RecordingReporter):
        def progress(self, description, total, unit="it"):
            inner = super().progress(description, total, unit)

            class Bar:
                def __enter__(self):
                    return inner.__enter__()

                def __exit__(self, *exc):
                    closed.append(description)
                    return inner.__exit__(*exc)

            return Bar()

    printer = EventPrinter(Console())
    bar = EventReporter("gate[a/b]", printer).progress("scoring", total=3)
    bar.__enter__()  # the worker dies here: no ProgressClosed ever comes
    printer.close_bars("gate[a/b]")
    assert closed == ["scoring"]


def test_the_local_executor_reports_in_the_graphs_order_with_where_each_task_ran(tmp_path):
    config = config_with(tmp_path)
    report = execute(
        config,
        ArtifactStore(tmp_path / "work"),
        plan_tasks(config),
        reporter=RecordingReporter(),
        stages=fake_stages(),
    )
    assert [r.task for r in report.results] == plan_tasks(config)
    assert {r.node for r in report.results} == {"local"}
    assert all(r.log is not None and r.log.is_file() for r in report.results if r.state is TaskState.ran)


def test_the_local_executor_never_imports_ray(tmp_path):
    config_with(tmp_path, **{"tiny_train_steps = 300": "tiny_train_steps = 2"})
    argv = ["fetch", "--config", str(tmp_path / "cfg.toml"), "--work-dir", str(tmp_path / "work")]
    code = (
        "import sys\n"
        "from pipeline.cli import main\n"
        f"code = main({argv!r})\n"
        "assert code == 0, code\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "work" / "store" / "fetch").glob("*/manifest.json"))  # it ran the task


def test_an_unknown_executor_is_one_line_naming_the_option(tmp_path, capsys, in_repo_root):
    from pipeline.cli import main

    assert main(["run", "--work-dir", str(tmp_path / "work"), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "--executor slurm" in err and "Traceback" not in err
    assert not (tmp_path / "work" / "store").exists()


def test_the_executor_and_ray_address_are_config_fields_outside_every_key(tmp_path):
    text = tmp_path / "cfg.toml"
    config = config_with(tmp_path)
    text.write_text(text.read_text() + '\n[execution]\nexecutor = "ray"\nray_address = "10.0.0.1:6379"\n')
    on_ray = load_config(text)
    assert on_ray.execution.executor == "ray" and on_ray.execution.ray_address == "10.0.0.1:6379"
    from pipeline.execution.driver import status

    store = ArtifactStore(tmp_path / "work")
    execute(config, store, plan_tasks(config), reporter=RecordingReporter(), stages=fake_stages())
    states = {r.state for r in status(on_ray, store, plan_tasks(on_ray), fake_stages())}
    assert states == {TaskState.up_to_date}


def test_the_console_shows_bars_of_tasks_running_at_once_in_one_display():
    import io

    from rich.console import Console

    from pipeline.output.console import RichReporter

    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=100))
    printer = EventPrinter(reporter)
    download = EventReporter("fetch", printer).progress("download", total=2e6, unit="B")
    scoring = EventReporter("gate[a/b]", printer).progress("scoring", total=4)
    advance_download = download.__enter__()
    advance_scoring = scoring.__enter__()  # a second live display would raise rich's LiveError here
    advance_download(1e6)
    advance_scoring(2)
    scoring.__exit__(None, None, None)
    download.__exit__(None, None, None)
    text = out.getvalue()
    assert "download" in text and "scoring" in text and "2/4" in text
    assert reporter._bars is None  # the display stops with the last bar
