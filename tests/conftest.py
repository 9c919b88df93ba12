"""Shared fixtures. No test touches the network: every root points at a temp dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches and tokens never leak in from the developer's machine."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tiny Mistral (GQA, rope_theta 1e6), trained 300 steps: a Hugging Face folder."""
    from pipeline.hub.tiny_model import generate_tiny_mistral

    return generate_tiny_mistral(tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run with the repository root as cwd (the embedded default's paths resolve there)."""
    monkeypatch.chdir(REPO_ROOT)
    return REPO_ROOT


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
