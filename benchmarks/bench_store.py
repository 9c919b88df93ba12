"""Verified and still fast: an unchanged `run` over the real job's layout with multi-GB artifacts.

pipeline.toml's 21 tasks (fetch, 2 calibrations, 6 builds, 6 gates, 6 publishes
into a destination) with the stages' real keys (config sections, data-set and
template digests) and the real publish release; the stages' work is replaced by
writing sparse files of the real job's sizes: a 3-shard model (fetch) and a
checkpoint per precision that each engine hard-links, as the reference backend does.
Every byte is hashed once when written; after that each run stats every file
of every artifact and published version against its manifest.

Goal: an unchanged run < 1 s; a touched shard is hashed once, then fast again.
TRUST_BENCH_GIB sets the model size (default 4 GiB; 14.5 for Mistral 7B's shards).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.bench_publish import sample_release
from pipeline.commands.verify import audit
from pipeline.core import integrity, manifest
from pipeline.core.manifest import list_files
from pipeline.core.reporter import RecordingReporter
from pipeline.core.store import ArtifactStore
from pipeline.execution.driver import execute, status
from pipeline.execution.results import TaskState
from pipeline.facts.config import load_config
from pipeline.planning.tasks import plan_tasks
from pipeline.serving.release import publish_release
from pipeline.serving.release_manifest import RELEASE_MANIFEST
from pipeline.stages import STAGES
from pipeline.stages.base import Stage, StageOutcome
from pipeline.stages.publish import PublishRecord, variant_destination

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def _stages(model_bytes: int):
    """The real stages' keys, with their work replaced by writing files of the real sizes."""

    def fetch(ctx):
        for n in range(3):
            _sparse(ctx.out_dir / "model" / f"model-0000{n + 1}-of-00003.safetensors", model_bytes // 3)
        (ctx.out_dir / "model" / "config.json").write_text('{"model_type": "mistral"}\n')
        return {}

    def calibrate(ctx):
        _sparse(ctx.out_dir / "checkpoint" / "rank0.safetensors", model_bytes // 2)  # INT8: half of fp16
        (ctx.out_dir / "checkpoint" / "config.json").write_text(f'{{"precision": "{ctx.precision.value}"}}\n')
        return {}

    def build(ctx):
        engine = ctx.out_dir / "engine"
        engine.mkdir()
        os.link(
            ctx.inputs["calibrate"].path / "checkpoint" / "rank0.safetensors", engine / "rank0.safetensors"
        )
        (engine / "config.json").write_text(f'{{"profile": "{ctx.profile.name}"}}\n')
        return {}

    def gate(ctx):
        (ctx.out_dir / "gate.json").write_text('{"verdict": true}\n')
        return {}

    def publish_run(ctx):
        repository = ctx.out_dir / "repository"
        engine = repository / "tensorrt_llm" / "1" / "engine"
        engine.mkdir(parents=True)
        for f in (ctx.inputs["build"].path / "engine").iterdir():
            os.link(f, engine / f.name)
        (repository / "tensorrt_llm" / "config.pbtxt").write_text('name: "tensorrt_llm"\n')
        release = sample_release([f.entry() for f in list_files(repository, trusted=ctx.trusted)])
        (repository / RELEASE_MANIFEST).write_text(release.model_dump_json(indent=2))
        slot = variant_destination(ctx.config, ctx.precision.value, ctx.profile.name)
        done = publish_release(
            repository, slot, release.files, lock_root=ctx.config.publish.destination, trusted=ctx.trusted
        )
        return PublishRecord(
            destination=str(slot),
            version=done.version,
            path=str(done.path),
            created=done.created,
            release=release,
            version_stats=done.stats,
        )

    works = {"fetch": fetch, "calibrate": calibrate, "build": build, "gate": gate, "publish": publish_run}

    def sized(real: Stage, work) -> Stage:
        class Sized(type(real)):  # the real key and checks, its work replaced
            def run(self, ctx):
                return StageOutcome(summary=self.name, record=work(ctx))

        return Sized()

    return {name: sized(STAGES[name], work) for name, work in works.items()}


def _timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def main() -> None:
    model_bytes = int(float(os.environ.get("TRUST_BENCH_GIB", "4")) * GIB)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        text = (ROOT / "pipeline.toml").read_text()
        config_path = tmp / "pipeline.toml"
        config_path.write_text(text.replace('"calib_data/', f'"{ROOT}/calib_data/'))
        config = load_config(config_path)
        config = config.model_copy(
            update={"publish": config.publish.model_copy(update={"destination": tmp / "model_repository"})}
        )
        store = ArtifactStore(tmp / "work")
        tasks = plan_tasks(config)
        stages = _stages(model_bytes)
        hashed: list[int] = []  # bytes hashed, by whoever hashes (the manifest writer, the verifier)
        real_sha256 = integrity.sha256_file
        counting = lambda p: hashed.append(p.stat().st_size) or real_sha256(p)  # noqa: E731
        integrity.sha256_file = manifest.sha256_file = counting

        def run():
            return execute(config, store, tasks, reporter=RecordingReporter(), stages=stages)

        first_s, first = _timed(run)
        assert first.error is None, first.error
        written = sum(hashed)
        print(
            f"layout: {len(tasks)} tasks; model {model_bytes / GIB:.1f} GiB, 2 checkpoints; 6 engines and 6"
        )
        print(f"        published versions hard-linked; {written / GIB:.1f} GiB hashed, each byte once")
        print(
            f"first run (writes and hashes everything): {first_s:7.2f} s ({written / GIB / first_s:.2f} GiB/s)"
        )
        hashed.clear()
        again_s, again = _timed(run)
        assert {r.state for r in again.results} == {TaskState.up_to_date} and not hashed
        print(f"unchanged run, every file verified:      {again_s:7.3f} s  (goal < 1 s; 0 bytes hashed)")
        status_s, _ = _timed(lambda: status(config, store, tasks, stages))
        print(f"status:                                  {status_s:7.3f} s")
        verify_s, report = _timed(lambda: audit(store, config.publish.destination))
        assert report.ok, report.findings
        print(
            f"verify ({report.artifacts} artifacts, {report.published} versions):          {verify_s:7.3f} s"
        )
        shard = next(store.root.glob("fetch/*/model/model-00001-of-00003.safetensors"))
        st = shard.stat()
        os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        hashed.clear()
        touched_s, _ = _timed(run)
        print(
            f"run after a `touch` of one shard:        {touched_s:7.2f} s  "
            f"(rehashed {sum(hashed) / GIB:.2f} GiB: that shard only)"
        )
        hashed.clear()
        after_s, _ = _timed(run)
        print(f"and the run after that:                  {after_s:7.3f} s  (rehashed {sum(hashed)} bytes)")
        integrity.sha256_file = manifest.sha256_file = real_sha256
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
