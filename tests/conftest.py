"""Shared test fixtures: where the real data lives, and the smoke switch for notebooks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """``$PAPER_REPRO_SHARED_DATA`` or ``<repo>/../shared/data``; None when absent."""
    env = os.environ.get("PAPER_REPRO_SHARED_DATA")
    d = Path(env) if env else ROOT.parent / "shared" / "data"
    return d if d.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data not found: set PAPER_REPRO_SHARED_DATA to the folder holding "
                    "imagenet-val-1300/ and keras-weights/ to run this check")
    return d


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    """Tests never write into the committed results/ folder."""
    monkeypatch.setenv("PAPER_REPRO_RESULTS", str(tmp_path / "results"))
