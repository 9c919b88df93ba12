"""The Ray runner: every ready task at once, each as a Ray task on a node that has what it asks for.

The driver (this process) keeps the work dir's lock, keys and verifies artifacts, and writes what
tasks share; a worker runs one TaskSpec (pipeline.execution.spec.run_task) into a staged folder of
the store and renames it into place. The store must therefore be one filesystem every node mounts at
the same path: `prove_shared_storage` checks that before the first task. A worker's messages and
progress reach the driver through a Ray queue; a worker that dies is retried once (Ray's
max_retries), and its staged folder, never read, is removed by the driver when the run ends.
Ray is imported here only, on first use: the local executor needs none of it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.core.errors import ExitCode, InputError, Interrupted, MissingDependencyError, RemoteTaskError
from pipeline.core.store import ArtifactStore
from pipeline.execution.events import Emit, Event, ProgressAdvanced
from pipeline.execution.resources import TaskResources, task_resources, unplaceable
from pipeline.execution.spec import TaskOutcome, TaskSpec, run_task
from pipeline.facts.config import PipelineConfig
from pipeline.hub.client import SETTINGS_ENV
from pipeline.planning.tasks import Task
from pipeline.stages import STAGES
from pipeline.stages.base import Stage

if TYPE_CHECKING:
    from ray import ObjectRef

ResourcesOf = Callable[[PipelineConfig, Task], TaskResources]
T = TypeVar("T")

RETRIES = 1  # a worker that dies mid-task: its task runs once more, then is reported failed
POLL_S = 0.2  # how often the driver shows the workers' events while it waits
RECHECK_S = 5.0  # how often it checks that a waiting task still has a node it fits on
MARKER_TIMEOUT_S = 120.0  # a node's first worker starts in seconds; a node that cannot, fails the check
FLUSH_S = 0.25  # a worker sends progress at most this often (messages at once)
SHARED_CHECK_DIR = ".shared-check"
CONNECT_TIMEOUT_S = 5.0


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingDependencyError(
            "the ray executor needs Ray", hint="pip install 'trtllm-pipeline[ray]' (or use --executor local)"
        ) from None
    return ray


def _interruptible(call: Callable[[], T]) -> T:
    """call(), where a signal that arrives during Ray's compiled code ends it as Interrupted: the CLI's
    handler raises there, and Cython reports that as a SystemError with the Interrupted as its cause."""
    try:
        return call()
    except SystemError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, Interrupted):
            raise cause from None
        raise


def _no_cluster(address: str, problem: str) -> MissingDependencyError:
    return MissingDependencyError(
        f"no Ray cluster at --ray-address {address}: {problem}",
        hint="start one (`ray start --head`, then `ray start --address=<head>:6379` on each node) "
        "or pass its address",
    )


def _check_reachable(address: str) -> None:
    """Fail in seconds where ray.init would wait minutes: the address (auto: the one this host's last
    `ray start` recorded, or RAY_ADDRESS) must name a Ray head that accepts connections. Ray Client
    addresses (ray://) are left to Ray."""
    if address.startswith("ray://"):
        return
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        host_port = canonicalize_bootstrap_address_or_die(address)
    except (ConnectionError, ValueError) as exc:
        raise _no_cluster(address, str(exc).strip().splitlines()[0]) from None
    host, _, port = host_port.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise _no_cluster(address, f"nothing answers at {host_port} ({exc.strerror or exc})") from None


def connect(address: str, *, env_vars: dict[str, str] | None = None) -> None:
    """Join the Ray cluster at address ("auto": the one this node belongs to, or RAY_ADDRESS).

    Workers get the hub settings of this process (endpoint, offline, timeouts; never the token: a node
    that fetches from a gated repo needs HF_TOKEN in its own environment)."""
    ray = _ray()
    _check_reachable(address)
    env = {name: os.environ[name] for name in SETTINGS_ENV if name in os.environ}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": {**env, **(env_vars or {})}},
            log_to_driver=False,  # workers report through events; their own output stays in their logs
            logging_level=logging.WARNING,
        )
    except ConnectionError as exc:
        raise _no_cluster(address, str(exc).strip().splitlines()[0]) from None


def disconnect() -> None:
    _ray().shutdown()


def live_nodes() -> list[dict[str, Any]]:
    return [n for n in _ray().nodes() if n.get("Alive")]


def _write_marker(path: str, token: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(token)


def prove_shared_storage(work_dir: Path, *, write: Callable[[str, str], None] = _write_marker) -> None:
    """Every live node writes a marker under work_dir; the driver must see each one, or refuses."""
    ray = _ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = work_dir / SHARED_CHECK_DIR
    remote = ray.remote(write)
    pending = {}
    for node in live_nodes():
        token = uuid.uuid4().hex
        marker = folder / f"{node['NodeID'][:12]}-{token[:8]}"
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ref = remote.options(num_cpus=0, scheduling_strategy=strategy, max_retries=0).remote(
            str(marker), token
        )
        pending[ref] = (node["NodeManagerAddress"], marker, token)
    try:
        for ref, (address, marker, token) in pending.items():
            try:
                ray.get(ref, timeout=MARKER_TIMEOUT_S)
            except Exception as exc:  # the node could not write there at all (no such folder, read-only)
                reason = f"its worker could not write {marker}: {str(exc).strip().splitlines()[-1]}"
            else:
                seen = marker.read_text() if marker.is_file() else None
                reason = None if seen == token else f"a file its worker wrote in {folder} is not visible here"
            if reason is not None:
                raise InputError(
                    f"the work dir is not shared with Ray node {address}: {reason}",
                    path=work_dir,
                    hint="put --work-dir on a filesystem every node mounts at the same path (NFS, a PVC)",
                )
    finally:
        for _, marker, _ in pending.values():
            marker.unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


class _QueueEmitter:
    """A worker's events, sent to the driver's queue: messages at once, progress at most every FLUSH_S."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.buffer: list[Event] = []
        self.sent = time.monotonic()

    def __call__(self, event: Event) -> None:
        self.buffer.append(event)
        if not isinstance(event, ProgressAdvanced) or time.monotonic() - self.sent > FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.queue.put_nowait_batch(self.buffer)
            self.buffer = []
        self.sent = time.monotonic()


def _run_on_node(spec: TaskSpec, queue: Any, stages: Mapping[str, Stage]) -> TaskOutcome:
    """The Ray task: run_task on this node; the error, if any, in a form that crosses processes."""
    import ray

    node = f"{ray.util.get_node_ip_address()} {ray.get_runtime_context().get_node_id()[:12]}"
    emit = _QueueEmitter(queue)
    try:
        outcome = run_task(spec, emit, stages, node=node)
    finally:
        emit.flush()
    if outcome.error is not None:
        outcome = replace(outcome, error=RemoteTaskError.of(outcome.error))
    return outcome


class RayTaskRunner:
    """Starts each spec as a Ray task at once (Ray queues what does not fit yet)."""

    def __init__(self, *, stages: Mapping[str, Stage] = STAGES, resources_of: ResourcesOf = task_resources):
        ray = _ray()
        from ray.util.queue import Queue

        self.stages = stages
        self.resources_of = resources_of
        self._queue = Queue(actor_options={"num_cpus": 0})
        self._remote = ray.remote(_run_on_node)
        self._running: dict[ObjectRef, tuple[TaskSpec, TaskResources, float]] = {}
        self._checked = time.monotonic()

    def refuse_unplaceable(self, config: PipelineConfig, tasks: list[Task]) -> None:
        """Before anything runs: a task no live node can ever take fails the run in one line."""
        nodes = [n["Resources"] for n in live_nodes()]
        for task in tasks:
            problem = unplaceable(self.resources_of(config, task), nodes)
            if problem is not None:
                raise MissingDependencyError(
                    f"{task.id} cannot run on this Ray cluster: {problem}",
                    hint="start a node that has it (`ray start --address=<head>:6379 --resources=...`; a GPU "
                    "node labels itself with its accelerator type)",
                )

    def has_room(self) -> bool:
        return True

    def running(self) -> int:
        return len(self._running)

    def start(self, spec: TaskSpec) -> None:
        resources = self.resources_of(spec.config, spec.task)
        demand = resources.demand()
        ref = self._remote.options(
            num_cpus=demand.pop("CPU"),
            num_gpus=demand.pop("GPU", 0),
            resources=demand,
            max_retries=RETRIES,
            retry_exceptions=False,  # an error the stage raised is its answer; only a lost worker reruns
        ).remote(spec, self._queue, self.stages)
        self._running[ref] = (spec, resources, time.time())

    def wait(self, emit: Emit) -> list[TaskOutcome]:
        ray = _ray()
        while True:
            ended, _ = _interruptible(lambda: ray.wait(list(self._running), num_returns=1, timeout=POLL_S))
            self._drain(emit)
            if ended:
                break
            stuck = self._stuck()
            if stuck:
                return stuck
        ended, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        outcomes = [self._outcome(ref) for ref in ended]
        self._drain(emit)
        return outcomes

    def cancel(self) -> list[TaskSpec]:
        ray = _ray()
        for ref in self._running:
            ray.cancel(ref, force=True)  # kills the worker: it commits nothing more
        ray.wait(list(self._running), num_returns=len(self._running), timeout=30)
        stopped = [spec for spec, _, _ in self._running.values()]
        self._running.clear()
        return stopped

    def _drain(self, emit: Emit) -> None:
        size = _interruptible(self._queue.qsize)
        if size:
            for event in _interruptible(lambda: self._queue.get_nowait_batch(size)):
                emit(event)

    def _stuck(self) -> list[TaskOutcome]:
        """Tasks waiting for a node that no longer exists (it left the cluster): failed, not pending."""
        if time.monotonic() - self._checked < RECHECK_S:
            return []
        self._checked = time.monotonic()
        nodes = [n["Resources"] for n in live_nodes()]
        out = []
        for ref, (spec, resources, started) in list(self._running.items()):
            problem = unplaceable(resources, nodes)
            if problem is not None:
                _ray().cancel(ref, force=True)
                del self._running[ref]
                message = f"{spec.task.id} cannot run on this Ray cluster: {problem}"
                error = RemoteTaskError(message, exit_code=ExitCode.MISSING_DEPENDENCY)
                out.append(self._failed(spec, started, error))
        return out

    def _outcome(self, ref: ObjectRef) -> TaskOutcome:
        ray = _ray()
        spec, _, started = self._running.pop(ref)
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the stage raised something that is not a PipelineError
            cause = str(exc.cause) if exc.cause is not None else str(exc).splitlines()[0]
            error = RemoteTaskError(
                f"{spec.task.id}: internal error on a Ray worker: {type(exc.cause).__name__}: {cause}",
                hint="its traceback is in the Ray worker's log (ray logs); rerun with --executor local --debug",
                exit_code=ExitCode.INTERNAL,
            )
        except ray.exceptions.RayError as exc:  # the worker or its node died, on each of its tries
            error = RemoteTaskError(
                f"{spec.task.id}: its Ray worker died, {RETRIES + 1} times "
                f"({str(exc).strip().splitlines()[0]})",
                hint="see the task's log; a killed worker leaves nothing in the store, so a rerun starts clean",
            )
        return self._failed(spec, started, error)

    @staticmethod
    def _failed(spec: TaskSpec, started: float, error: RemoteTaskError) -> TaskOutcome:
        return TaskOutcome(spec.task, spec.key, None, error, started, time.time(), "", spec.log_if_written())


@contextmanager
def ray_runner(config: PipelineConfig, store: ArtifactStore, to_run: list[Task]) -> Iterator[RayTaskRunner]:
    """Joined to config.execution.ray_address, with the store proven shared and `to_run` (the tasks
    that will run) proven placeable; left when the run ends."""
    connect(config.execution.ray_address)
    try:
        prove_shared_storage(store.work_dir.absolute())
        runner = RayTaskRunner()
        runner.refuse_unplaceable(config, to_run)
        yield runner
    finally:
        disconnect()
