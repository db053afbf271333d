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
import threading
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
    # No fsync (a throwaway cluster on tmpfs), but every commit written to the WAL before it is answered: a stop
    # (immediate, as a crash) keeps what was committed, as a real server does.
    "fsync": "off",
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
        # In memory when the machine has a tmpfs: the cluster is throwaway, and creating databases writes files.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="codexlb-pg-", dir=shm))
        self.data = self.root / "data"
        self._as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)
        self._session = _PsqlSession([shutil.which("psql") or str(bindir / "psql"), "-X", "-q", "-A", "-t", "-h",
                                      str(self.root), "-p", str(self.port), "-U", SUPERUSER])

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
        self._session.close()
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases and connections

    def url(self, dbname: str = TEMPLATE, *, password: bool = False) -> str:
        """postgresql:// URL for `dbname`; `password=True` gives the password user's (wrong it with `.replace`)."""
        user = f"{PASSWORD_USER}:{PASSWORD}" if password else SUPERUSER
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None, template: str = TEMPLATE) -> str:
        """A new database cloned from `template` (the empty one unless said); returns its name."""
        name = name or self._next_name()
        self.sql(self._create_sql(name, template))
        return name

    async def acreate_database(self, name: str | None = None, template: str = TEMPLATE) -> str:
        name = name or self._next_name()
        await self.asql(self._create_sql(name, template))
        return name

    def drop_database(self, name: str) -> None:
        """Dropped with whoever is still connected: each test's database would otherwise fill the tmpfs."""
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def kill_connections(self, dbname: str | None = None) -> int:
        """Terminate every client backend (of `dbname` only, if given); returns how many."""
        return int(self.sql(self._kill_sql(dbname)) or 0)

    async def akill_connections(self, dbname: str | None = None) -> int:
        return int(await self.asql(self._kill_sql(dbname)) or 0)

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        """Run SQL as the superuser on the session's psql; returns its unaligned output."""
        return self._session.run(statement, dbname)

    async def asql(self, statement: str, dbname: str = "postgres") -> str:
        return await asyncio.to_thread(self.sql, statement, dbname)

    # -- internals

    def _next_name(self) -> str:
        return f"t{os.getpid()}_{next(self._names)}"

    @staticmethod
    def _create_sql(name: str, template: str) -> str:
        # FILE_COPY copies the template's files instead of WAL-logging every block: the faster one with fsync off.
        return f'CREATE DATABASE "{name}" TEMPLATE {template} STRATEGY FILE_COPY'

    @staticmethod
    def _kill_sql(dbname: str | None) -> str:
        where = f" AND datname = '{dbname}'" if dbname else ""
        return ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                f"WHERE backend_type = 'client backend' AND pid <> pg_backend_pid(){where}")

    def _run(self, argv: list) -> None:
        prefix = ["runuser", "-u", SUPERUSER, "--"] if self._as_postgres else []
        done = subprocess.run(prefix + [str(a) for a in argv], capture_output=True, text=True, timeout=TIMEOUT_S * 2)
        if done.returncode:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()}\n{tail}")


class _PsqlSession:
    """One long-lived psql: spawning psql per statement costs 30-50 ms, a statement on a live one about 1 ms.

    Each statement is followed by a marker line saying whether it failed. A session cut by a restart or a kill
    exits at its next statement, before running it: it is then started again and the statement sent once more.
    """

    def __init__(self, argv: list[str]) -> None:
        self._argv = argv
        self._proc: subprocess.Popen | None = None
        self._dbname = ""
        self._lock = threading.Lock()

    def run(self, statement: str, dbname: str) -> str:
        with self._lock:
            try:
                return self._exchange(statement, dbname)
            except _SessionLost:
                self.close()
                return self._exchange(statement, dbname)

    def close(self) -> None:
        if self._proc:
            self._proc.kill()
            self._proc.wait()
            self._proc.stdout.close()
            self._proc.stdin.close()
            self._proc = None

    def _exchange(self, statement: str, dbname: str) -> str:
        switch = ""
        if self._proc is None:
            self._proc = subprocess.Popen([*self._argv, "-d", dbname], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True)
            self._dbname = dbname
        elif dbname != self._dbname:
            switch = f"\\c {dbname}\n"
        script = (f"{switch}{statement};\n\\if :ERROR\n\\echo {_FAILED} :LAST_ERROR_MESSAGE\n\\else\n"
                  f"\\echo {_DONE}\n\\endif\n")
        watchdog = threading.Timer(TIMEOUT_S, self._proc.kill)  # bounds every read below
        watchdog.start()
        try:
            self._proc.stdin.write(script)
            self._proc.stdin.flush()
            lines = []
            while (line := self._proc.stdout.readline()) != "":
                if line.startswith((_DONE, _FAILED)):
                    break
                lines.append(line)
        except BrokenPipeError:
            line = ""
        finally:
            watchdog.cancel()
        # A session cut by a stop of the server may also fail the statement with no message: lost, too.
        if line == "" or line[len(_FAILED):].strip() == "" and line.startswith(_FAILED):
            raise _SessionLost("".join(lines))
        self._dbname = dbname
        if line.startswith(_FAILED):
            raise RuntimeError(f"psql failed on {statement!r}: {line[len(_FAILED):].strip()}")
        return "".join(lines).strip()


class _SessionLost(Exception):
    pass


_DONE = "__pgserver_done__"
_FAILED = "__pgserver_failed__"


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
    name = await pg_server.acreate_database()
    yield pg_server.url(name)
    await asyncio.to_thread(pg_server.drop_database, name)
