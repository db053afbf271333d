"""End-to-end fixtures: the real Codex CLI, found or installed once per session.

`CODEXLB_CODEX_BIN` names a `codex` executable to use as is. Otherwise the pinned
version is installed with npm into `<repo>/.tools` (git-ignored) on first use and
reused after that; without npm the tests that need the CLI are skipped.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# The CLI version whose wire behaviour is documented in shared/protocol/codex-cli.md.
CODEX_CLI_VERSION = "0.169.0"
CODEX_NPM_PACKAGE = f"@openai/codex@{CODEX_CLI_VERSION}"
NPM_INSTALL_TIMEOUT_S = 300.0
VERSION_TIMEOUT_S = 30.0

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"
TOOLS_CODEX = TOOLS / "node_modules" / ".bin" / "codex"


def _version(binary: Path) -> str | None:
    """`codex --version` ("codex-cli 0.169.0") -> "0.169.0"; None if it does not run."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    words = done.stdout.split()
    return words[-1] if words else None


def _npm_install(npm: str) -> None:
    TOOLS.mkdir(parents=True, exist_ok=True)
    command = [npm, "install", "--prefix", str(TOOLS), "--no-audit", "--no-fund", CODEX_NPM_PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NPM_INSTALL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(command)} took more than {NPM_INSTALL_TIMEOUT_S:.0f} s\n"
                    f"stdout:\n{exc.stdout or ''}\nstderr:\n{exc.stderr or ''}", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed with rc {done.returncode}\n"
                    f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}", pytrace=False)


@pytest.fixture(scope="session")
def codex_bin() -> Path:
    """The Codex CLI executable."""
    explicit = os.environ.get("CODEXLB_CODEX_BIN")
    if explicit:
        binary = Path(explicit)
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail(f"CODEXLB_CODEX_BIN={explicit} is not an executable file", pytrace=False)
        return binary
    if TOOLS_CODEX.exists() and _version(TOOLS_CODEX) == CODEX_CLI_VERSION:
        return TOOLS_CODEX
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not available to install the Codex CLI (npm install @openai/codex)")
    TOOLS.mkdir(parents=True, exist_ok=True)
    # One installer at a time, should several pytest processes start together.
    with open(TOOLS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (TOOLS_CODEX.exists() and _version(TOOLS_CODEX) == CODEX_CLI_VERSION):
            _npm_install(npm)
    found = _version(TOOLS_CODEX) if TOOLS_CODEX.exists() else None
    if found != CODEX_CLI_VERSION:
        pytest.fail(f"after installing {CODEX_NPM_PACKAGE}, {TOOLS_CODEX} reports version {found!r}",
                    pytrace=False)
    return TOOLS_CODEX
