from __future__ import annotations

import pytest

from tests.fuzz.harness import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One sim and one codexlb per test module (a module's fuzzing may create keys or set a password)."""
    running = Stack(tmp_path_factory.mktemp("fuzz"))
    try:
        yield running
    finally:
        codes = running.close()
    assert codes == [0, 0], f"codexlb and the sim exited with {codes} after SIGTERM"
