"""Shared test fixtures: the real corpus, a fake ALSA device, a real mosquitto broker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_alsa", "tests.fixtures_mqtt"]

REPO = Path(__file__).resolve().parent.parent


def corpus_path() -> Path:
    """``$MICA_CORPUS`` or ``../shared/corpus`` beside the checkout."""
    return Path(os.environ.get("MICA_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real recordings; a test that needs them fails (never skips) when they are missing."""
    path = corpus_path()
    if not (path / "MANIFEST.md").is_file():
        pytest.fail(f"corpus not found at {path} (set MICA_CORPUS)")
    return path
