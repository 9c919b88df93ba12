import json
import re
import subprocess
import sys

import pytest

from pipeline.cli import main


def test_help_imports_no_heavy_module():
    code = (
        "import sys; from pipeline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'modelopt', 'tensorrt_llm', 'pipeline.facts.config') if m in sys.modules]\n"
        "print('HEAVY:' + ','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "HEAVY:"


def test_unknown_option_is_exit_2(capsys):
    assert main(["run", "--bogus"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_status_json_lists_every_task(tmp_path, in_repo_root, capsys):
    assert main(["status", "--json", "--work-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["stage"] for r in rows} == {"fetch", "calibrate", "build", "gate_engine", "gate", "publish"}
    assert all(r["state"] == "missing" for r in rows)


def test_unknown_profile_filter_is_exit_2(tmp_path, in_repo_root, capsys):
    assert main(["build", "--profile", "nope", "--work-dir", str(tmp_path)]) == 2
    assert "--profile nope" in capsys.readouterr().err


def test_missing_data_file_fails_before_any_stage_runs(tmp_path, repo_root, capsys):
    text = (repo_root / "pipeline" / "defaults" / "tiny.toml").read_text()
    config = tmp_path / "cfg.toml"
    text = text.replace('eval_dataset = "calib_data/offline-eval.jsonl"', 'eval_dataset = "nope.jsonl"')
    config.write_text(text.replace('"calib_data/', f'"{repo_root}/calib_data/'))
    work = tmp_path / "work"
    assert main(["run", "--config", str(config), "--work-dir", str(work)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{config}: gate.eval_dataset: file not found: {tmp_path / 'nope.jsonl'}" in err
    assert not (work / "store").exists()  # nothing ran, not even the fetch
    # A stage that does not read the file is not blocked by it.
    assert main(["status", "--config", str(config), "--work-dir", str(work)]) == 0


COMMANDS_WITH_A_WORK_DIR = [
    "run",
    "fetch",
    "publish",
    "status",
    "verify",
    "plan",
    "bench",
    "smoke",
    "gpu-selftest",
]


def test_every_command_refuses_a_work_dir_that_is_a_file_in_one_line(tmp_path, in_repo_root, capsys):
    """--work-dir names a file: each command exits 2 saying so, before it reads or writes anything."""
    a_file = tmp_path / "work"
    a_file.write_text("not a folder")
    for command in COMMANDS_WITH_A_WORK_DIR:
        assert main([command, "--work-dir", str(a_file)]) == 2, command
        err = capsys.readouterr().err.splitlines()
        assert err[0] == f"ERROR --work-dir {a_file}: {a_file} is a file, not a folder", command
        assert err[1].startswith("TIP point --work-dir at"), command
    assert a_file.read_text() == "not a folder"


def test_version_names_the_tensorrt_llm_and_container_it_targets(capsys):
    from pipeline import __version__
    from pipeline.facts.container import SERVING_CONTAINER

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert (
        out
        == f"trtllm-pipeline {__version__} (TensorRT-LLM {SERVING_CONTAINER.tensorrt_llm}, {SERVING_CONTAINER.tag})\n"
    )


@pytest.mark.parametrize(
    "command, absent",
    [
        ("fetch", ["--precision", "--profile", "--mount-path", "--allow-arch-mismatch", "--visualize"]),
        ("calibrate", ["--profile", "--mount-path", "--allow-arch-mismatch", "--visualize"]),
        ("build", ["--mount-path"]),
        ("gate", ["--mount-path"]),
    ],
)
def test_a_stage_command_lists_only_the_options_it_reads(command, absent, capsys):
    assert main([command, "--help"]) == 0
    listed = set(re.findall(r"(--[a-z-]+)", capsys.readouterr().out))
    assert {"--config", "--work-dir", "--force", "--json", "--dry-run"} <= listed
    assert not listed & set(absent)
    assert main([command, absent[0], "x"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_without_a_terminal_tables_do_not_wrap(tmp_path, in_repo_root, capsys, monkeypatch):
    """A CI log has no terminal: a status row and its path stay on one line."""
    monkeypatch.delenv("COLUMNS", raising=False)
    work = tmp_path / ("a-work-dir-with-a-long-name-" * 4)
    assert main(["status", "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert f"status of {work}" in out
    assert any(
        line.startswith("│ build[trtllm-engine/int8_sq/throughput]") and "never built" in line
        for line in out.splitlines()
    )


def test_status_shows_the_selected_variants_and_what_they_are_made_from(tmp_path, in_repo_root, capsys):
    args = ["status", "--json", "--work-dir", str(tmp_path), "--precision", "int8_wo", "--profile", "latency"]
    assert main([*args, "--backend", "trtllm-pytorch"]) == 0
    tasks = [r["task"] for r in json.loads(capsys.readouterr().out)]
    assert tasks == [
        "fetch",
        "calibrate[trtllm-pytorch/int8_wo]",
        "build[trtllm-pytorch/int8_wo/latency]",
        "gate_engine[trtllm-pytorch/int8_wo/gate]",
        "gate[trtllm-pytorch/int8_wo/latency]",
        "publish[trtllm-pytorch/int8_wo/latency]",
    ]
    assert main(args) == 0  # int8_wo of both backends
    tasks = [r["task"] for r in json.loads(capsys.readouterr().out)]
    assert (
        "publish[trtllm-engine/int8_wo/latency]" in tasks
        and "publish[trtllm-pytorch/int8_wo/latency]" in tasks
    )
    assert main(["status", "--work-dir", str(tmp_path), "--profile", "huge"]) == 2
    assert "--profile huge: not in the config's profiles" in capsys.readouterr().err


def test_every_options_help_is_printed_whole(monkeypatch, capsys):
    """Typer renders help through rich markup, which swallows text in square brackets it takes for a
    tag (a config's `[[backends]]` printed as `[]`): each option's help must reach --help as written."""
    import click
    import typer

    from pipeline.cli.app import app

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option: the help text is not wrapped apart
    root = typer.main.get_command(app)

    def commands(group, path):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from commands(command, [*path, name])
            else:
                yield [*path, name], command

    checked = 0
    for path, command in commands(root, []):
        assert main([*path, "--help"]) == 0
        shown = " ".join(capsys.readouterr().out.split())
        for param in command.params:
            help_text = getattr(param, "help", None)
            if help_text:
                assert " ".join(help_text.split()) in shown, (path, param.name)
                checked += 1
    assert checked > 50
