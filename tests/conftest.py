"""Shared test fixtures: where the real data lives, the smoke switch for notebooks, and the
property tests' profile under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests explore new random examples on every local run; under CI (CI=true) they replay
# the same examples, so a landing never depends on the luck of the draw.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")


def shared_data_dir() -> Path | None:
    """The package's real-data folder (``$PAPER_REPRO_SHARED_DATA`` or ``<repo>/../shared/data``);
    None when it is not a folder."""
    from paper_repro.feedforward.weights import shared_data_dir as package_dir

    d = package_dir()
    return d if d is not None and d.is_dir() else None


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
