"""SIGHUP (`codexlb reload`) on a real `serve` in the test's loop: the settings that can change in place do,
under load, with no failed request and no slot left behind; a config file that does not parse changes
nothing and says why; a changed setting that needs a new process is named as such. The `codexlb reload`
command runs as a real process and signals this one, as it would a server."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import io
import json
import os
import re
import signal
from pathlib import Path

from codexlb import config, log, reconfigure, server
from codexlb.app import create_app
from codexlb.server.reloading import Reloader
from codexlb.services import GATES, POOL, ROSTER, SETTINGS
from tests.fleet.conftest import import_accounts
from tests.serving import codexlb
from tests.test_upgrade import streaming_clients

README = Path(__file__).resolve().parent.parent / "README.md"


class Running:
    """`serve` in this loop, its settings read as `codexlb serve` reads them (flags, then the data dir's
    config.toml), and its log lines."""

    def __init__(self, settings, sim) -> None:
        self.data_dir = settings.data_dir
        self.flags = {"data_dir": str(settings.data_dir), "port": "0", "upstream_base_url": sim.upstream_base_url,
                      "auth_base_url": sim.url, "usage_poll_interval_s": "0", "log_format": "json"}
        if settings.database_url:
            self.flags["database_url"] = settings.database_url
        self.out = io.StringIO()

    def write_config(self, text: str) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.data_dir / "config.toml").write_text(text)

    async def __aenter__(self) -> "Running":
        loaded = config.load(self.flags)
        log.configure(loaded.settings.log_level, "json", stream=self.out)
        self.app = create_app(loaded.settings)
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(server.serve(
            loaded.settings, self.app, on_listening=listening.set_result,
            reloader=Reloader(loaded, functools.partial(reconfigure.apply, self.app))))
        self.url = await asyncio.wait_for(listening, 10)
        return self

    async def __aexit__(self, *_exc) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(self.task, 30)
        log.configure()

    def lines(self, event: str) -> list[dict]:
        return [line for line in map(json.loads, self.out.getvalue().splitlines()) if line["event"] == event]

    async def reload(self) -> tuple[int, str, str]:
        return await codexlb("reload", "--data-dir", str(self.data_dir))


async def until(condition, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def test_sighup_changes_the_log_level_and_a_gate_limit_under_load(settings, sim, clean_env):
    await import_accounts(settings, sim)
    running = Running(settings, sim)
    running.write_config('max_inflight = 2\nlog_level = "info"\n')
    stop, outcomes, failures = asyncio.Event(), {"ok": 0, "failed": 0}, []
    async with running:
        gate = running.app[GATES].inflight
        clients = asyncio.create_task(streaming_clients(running.url, stop, outcomes, failures, clients=12))
        try:
            await until(lambda: gate.in_use == 2 and gate.waiting > 0)
            probe = log.get("test.reload")
            probe.debug("before the reload")

            running.write_config('max_inflight = 8\nlog_level = "debug"\n')
            rc, out, err = await running.reload()
            assert rc == 0, err
            assert re.search(r"reloaded pid \d+: log_level, max_inflight;", out), out
            assert gate.capacity == 8
            await until(lambda: gate.in_use > 2)  # the waiters were let in at once
            probe.debug("after the reload")

            running.write_config('max_inflight = 1\nlog_level = "debug"\n')
            rc, out, err = await running.reload()
            assert rc == 0 and "max_inflight" in out, err
            await until(lambda: gate.in_use == 1)  # held slots finished; no more than one let in since
            served = outcomes["ok"]
            await until(lambda: outcomes["ok"] > served + 3)
            assert gate.in_use <= 1
        finally:
            stop.set()
            await asyncio.wait_for(clients, 60)
        assert (gate.in_use, gate.waiting) == (0, 0)  # every slot given back, none leaked by the resizes
    print(f"\nmax_inflight 2 -> 8 -> 1 by SIGHUP under 12 streaming clients: {outcomes['ok']} requests served, "
          f"{outcomes['failed']} failed")
    assert failures == [] and outcomes["ok"] > 0
    probes = [line["event"] for line in running.lines("before the reload") + running.lines("after the reload")]
    assert probes == ["after the reload"]
    assert [line["applied"] for line in running.lines("settings reloaded")] == [["log_level", "max_inflight"],
                                                                                ["max_inflight"]]


async def test_a_config_file_that_does_not_parse_changes_nothing_and_says_why(settings, sim, clean_env):
    running = Running(settings, sim)
    running.write_config("max_inflight = 3\n")
    async with running:
        running.write_config("max_inflight = 9\nlog_level = \n")
        rc, _out, err = await running.reload()
        assert rc == 1
        assert "reload failed; pid" in err and "goes on with its settings as they were" in err
        assert "not valid TOML" in err, err
        running.write_config("max_inflight = 0\n")
        rc, _out, err = await running.reload()
        assert rc == 1 and "invalid setting 'max_inflight'" in err and "must be at least 1" in err, err
        assert running.app[GATES].inflight.capacity == 3
        assert running.app[SETTINGS].max_inflight == 3
    errors = running.lines("reload failed; the settings stay as they were")
    assert len(errors) == 2 and "not valid TOML" in errors[0]["error"], errors


async def test_a_changed_port_is_named_as_needing_an_upgrade(settings, sim, clean_env, http):
    await import_accounts(settings, sim)
    running = Running(settings, sim)
    del running.flags["port"]  # from the file, as the flags given would keep winning
    running.write_config("port = 0\n")
    async with running:
        account_gate = running.app[GATES].account(running.app[ROSTER].all()[0])
        running.write_config('port = 1\nstrategy = "round_robin"\nheader_timeout_s = 5\naccount_max_streams = 3\n')
        rc, out, err = await running.reload()
        assert rc == 0, err
        assert re.search(r"reloaded pid \d+: strategy, account_max_streams;", out), out
        assert account_gate.capacity == 3 and type(running.app[POOL].strategy).__name__ == "RoundRobinStrategy"
        assert "not applied, needs `codexlb upgrade` (or a restart): port, header_timeout_s" in out, out
        async with http.get(f"{running.url}/health/ready") as resp:  # still where it was
            assert resp.status == 200
        assert running.app[SETTINGS].port == 0 and running.app[SETTINGS].strategy == "round_robin"

        pool = running.app[POOL]
        running.write_config("sticky_ttl_s = 0\n")  # stickiness off: nothing shared, as a start with 0
        assert (await running.reload())[0] == 0 and pool.share is None and pool.sticky.ttl_s == 0
        running.write_config("sticky_ttl_s = 60\n")  # and on again, shared again
        assert (await running.reload())[0] == 0 and pool.share is not None and pool.sticky.ttl_s == 60
    line = running.lines("settings changed that only a new process applies: run `codexlb upgrade` (or restart)")[0]
    assert line["settings"] == ["port", "header_timeout_s"] and line["level"] == "warning"


def test_the_readme_marks_exactly_the_reloadable_settings():
    rows = re.findall(r"^\| `(\w+)` \| `CODEXLB_\w+` \| `--[\w-]+` \|[^|]*\| (yes|) \|", README.read_text(), re.M)
    assert {name for name, reloads in rows if reloads} == config.RELOADABLE
    assert {name for name, _ in rows} == {f.name for f in config.FIELDS}


def test_a_reload_keeps_what_the_flags_said(tmp_path, clean_env):
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text("max_inflight = 3\n")
    loaded = config.load({"data_dir": str(data), "max_queue": "7"})
    (data / "config.toml").write_text("max_inflight = 4\nmax_queue = 9\nport = 1\n")
    plan = config.plan_reload(loaded.settings, loaded.again().settings)
    assert (plan.applied, plan.need_upgrade) == (("max_inflight",), ("port",))
    assert plan.settings == dataclasses.replace(loaded.settings, max_inflight=4)


async def test_reload_says_when_no_server_runs(tmp_path):
    rc, _out, err = await codexlb("reload", "--data-dir", str(tmp_path / "nothing"))
    assert rc == 1 and "no codexlb server runs on data dir" in err, err
