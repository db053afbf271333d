from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from codexlb.app import create_app
from codexlb.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(Settings(), data_dir=tmp_path / "data", port=0)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No CODEXLB_* from the developer's shell, and a home with no ~/.codexlb."""
    import os

    for name in list(os.environ):
        if name.startswith("CODEXLB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
