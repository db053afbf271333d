"""A real PostgreSQL server for the test session: Debian's binaries, a throwaway cluster on a free loopback port.

Built for speed, not durability (fsync, synchronous_commit and full_page_writes off). Every database a test asks
for is cloned from a template, which is much faster than a fresh one. When the binaries are missing, tests that
use `pg_server` skip, unless CI is set: then they fail, since CI must run them.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

SUPERUSER = "postgres"
# A user that must give a password, for tests of wrong credentials; every other login on 127.0.0.1 is trusted.
PASSWORD_USER = "codexlb_pw"
PASSWORD = "pw-for-tests"
TEMPLATE = "codexlb_template"
TIMEOUT_S = 30
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres live: `pg_config --bindir`, else Debian's /usr/lib/postgresql/N/bin."""
    candidates: list[str] = []
    if pg_config := shutil.which("pg_config"):
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                             timeout=10, check=True).stdout.strip())
        except (subprocess.SubprocessError, OSError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]), reverse=True)
    for candidate in candidates:
        if all((Path(candidate) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgServer:
    """One cluster in a temp dir; `start()`, `stop()`, `restart()` keep its data and port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="codexlb-pg-"))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self._psql = shutil.which("psql") or str(bindir / "psql")

    # -- lifecycle

    def init(self) -> None:
        if self._as_postgres:  # initdb and postgres refuse to run as root
            shutil.chown(self.root, user=SUPERUSER, group=SUPERUSER)
        self.root.chmod(0o700)
        self._run([self.bindir / "initdb", "-D", self.data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                   "--locale=C", "--no-sync"])
        settings = dict(_SETTINGS, port=str(self.port), unix_socket_directories=f"'{self.root}'")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        (self.data / "pg_hba.conf").write_text(
            f"local all all trust\n"
            f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
            f"host all all 127.0.0.1/32 trust\n")
        self.start()
        self.sql(f"CREATE ROLE {PASSWORD_USER} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        self.sql(f"CREATE DATABASE {TEMPLATE}")

    def start(self) -> None:
        # -w waits until the server accepts connections, -t bounds that wait.
        self._run([self.bindir / "pg_ctl", "start", "-D", self.data, "-w", "-t", str(TIMEOUT_S),
                   "-l", self.root / "server.log"])

    def stop(self) -> None:
        """Immediate: no checkpoint, every connection cut, as a crash would."""
        self._run([self.bindir / "pg_ctl", "stop", "-D", self.data, "-m", "immediate", "-w", "-t", str(TIMEOUT_S)])

    def restart(self) -> None:
        self.stop()
        self.start()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def arestart(self) -> None:
        await asyncio.to_thread(self.restart)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases and connections

    def url(self, dbname: str = TEMPLATE, *, password: bool = False) -> str:
        """postgresql:// URL for `dbname`; `password=True` gives the password user's (wrong it with `.replace`)."""
        user = f"{PASSWORD_USER}:{PASSWORD}" if password else SUPERUSER
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database cloned from the template; returns its name."""
        name = name or self._next_name()
        self.sql(self._create_sql(name))
        return name

    async def acreate_database(self, name: str | None = None) -> str:
        name = name or self._next_name()
        await self.asql(self._create_sql(name))
        return name

    def kill_connections(self, dbname: str | None = None) -> int:
        """Terminate every client backend (of `dbname` only, if given); returns how many."""
        return int(self.sql(self._kill_sql(dbname)) or 0)

    async def akill_connections(self, dbname: str | None = None) -> int:
        return int(await self.asql(self._kill_sql(dbname)) or 0)

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run one statement as the superuser over the unix socket; returns psql's unaligned output."""
        done = subprocess.run(self._psql_args(statement, dbname), capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode:
            raise RuntimeError(f"psql failed on {statement!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    async def asql(self, statement: str, dbname: str = "postgres") -> str:
        proc = await asyncio.create_subprocess_exec(*self._psql_args(statement, dbname), stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode:
            raise RuntimeError(f"psql failed on {statement!r}: {err.decode().strip()}")
        return out.decode().strip()

    # -- internals

    def _next_name(self) -> str:
        return f"t{os.getpid()}_{next(self._names)}"

    @staticmethod
    def _create_sql(name: str) -> str:
        # FILE_COPY copies the template's files instead of WAL-logging every block: the faster one with fsync off.
        return f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE} STRATEGY FILE_COPY'

    @staticmethod
    def _kill_sql(dbname: str | None) -> str:
        where = f" AND datname = '{dbname}'" if dbname else ""
        return ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE backend_type = 'client backend' AND pid <> pg_backend_pid(){where}")

    def _psql_args(self, statement: str, dbname: str) -> list[str]:
        return [self._psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p",
                str(self.port), "-U", SUPERUSER, "-d", dbname, "-c", statement]

    def _run(self, argv: list) -> None:
        prefix = ["runuser", "-u", SUPERUSER, "--"] if self._as_postgres else []
        done = subprocess.run(prefix + [str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT_S * 2)
        if done.returncode:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()}\n{tail}")


def missing(component: str) -> None:
    """Skip a test whose real component is not installed; in CI, fail instead."""
    message = f"{component} is not installed (.ci/run installs it from Debian)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server; tests take one fresh database each with `pg_database`."""
    bindir = find_bindir()
    if bindir is None:
        missing("PostgreSQL (initdb, pg_ctl, postgres)")
    server = PgServer(bindir)
    try:
        server.init()
        yield server
    finally:
        server.destroy()


@pytest.fixture
async def pg_database(pg_server):
    """postgresql:// URL of a fresh empty database for this test."""
    return pg_server.url(await pg_server.acreate_database())
