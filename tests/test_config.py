"""Settings precedence and errors, through the real `codexlb config show` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from codexlb.cli import main
from tests.conftest import ENGINE
from tests.serving import child_env

pytestmark = pytest.mark.usefixtures("clean_env")


def show(capsys, *args: str) -> dict:
    assert main(["config", "show", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def write_config(data_dir: Path, text: str) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "config.toml"
    path.write_text(text)
    return path


def test_defaults(capsys, tmp_path):
    out = show(capsys)
    assert out["settings"]["host"] == "127.0.0.1"
    assert out["settings"]["port"] == 2455
    assert out["settings"]["data_dir"] == str(tmp_path / "home" / ".codexlb")
    assert out["settings"]["upstream_base_url"] == "https://chatgpt.com/backend-api"
    assert out["settings"]["auth_base_url"] == "https://auth.openai.com"
    # The suite on PostgreSQL names its database in the environment.
    assert {name for name, source in out["sources"].items() if source != "default"} == (
        {"database_url"} if ENGINE == "postgres" else set())
    assert out["config_file"] is None


def test_file_overrides_default(capsys, tmp_path, monkeypatch):
    data_dir = tmp_path / "d"
    path = write_config(data_dir, 'port = 3000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("CODEXLB_DATA_DIR", str(data_dir))
    out = show(capsys)
    assert out["settings"]["port"] == 3000
    assert out["settings"]["host"] == "0.0.0.0"
    assert out["sources"]["port"] == f"config file {path}"
    assert out["config_file"] == str(path)


def test_env_overrides_file(capsys, tmp_path, monkeypatch):
    data_dir = tmp_path / "d"
    write_config(data_dir, "port = 3000\n")
    monkeypatch.setenv("CODEXLB_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CODEXLB_PORT", "4000")
    out = show(capsys)
    assert out["settings"]["port"] == 4000
    assert out["sources"]["port"] == "CODEXLB_PORT"


def test_flag_overrides_env(capsys, tmp_path, monkeypatch):
    data_dir = tmp_path / "d"
    write_config(data_dir, "port = 3000\n")
    monkeypatch.setenv("CODEXLB_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CODEXLB_PORT", "4000")
    out = show(capsys, "--port", "5000")
    assert out["settings"]["port"] == 5000
    assert out["sources"]["port"] == "--port"


def test_explicit_config_path_and_env_config(capsys, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('log_level = "debug"\n')
    assert show(capsys, "--config", str(elsewhere))["settings"]["log_level"] == "debug"
    monkeypatch.setenv("CODEXLB_CONFIG", str(elsewhere))
    assert show(capsys)["settings"]["log_level"] == "debug"


def test_data_dir_flag_locates_the_file(capsys, tmp_path):
    data_dir = tmp_path / "d"
    write_config(data_dir, "drain_timeout_s = 5\n")
    out = show(capsys, "--data-dir", str(data_dir))
    assert out["settings"]["drain_timeout_s"] == 5.0
    assert out["settings"]["data_dir"] == str(data_dir)


def test_toml_output_is_loadable_config(capsys, tmp_path):
    assert main(["config", "show", "--port", "2600", "--allowed-hosts", "a.example,*.b.example"]) == 0
    text = capsys.readouterr().out
    assert "port = 2600  # --port" in text
    assert 'allowed_hosts = ["a.example", "*.b.example"]  # --allowed-hosts' in text  # a list is a TOML array
    path = tmp_path / "saved.toml"
    path.write_text(text)
    loaded = show(capsys, "--config", str(path))["settings"]
    assert loaded["port"] == 2600 and loaded["allowed_hosts"] == ["a.example", "*.b.example"]


def test_credentials_in_urls_are_redacted(capsys, monkeypatch):
    monkeypatch.setenv("CODEXLB_UPSTREAM_BASE_URL", "https://user:hunter2@upstream.example/backend-api")
    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert "hunter2" not in text and "user:" not in text
    assert '"https://<redacted>@upstream.example/backend-api"' in text


def test_secret_settings_are_masked_when_set_and_said_unset_when_not(capsys, monkeypatch):
    assert main(["config", "show"]) == 0
    assert "# metrics_token is unset" in capsys.readouterr().out
    monkeypatch.setenv("CODEXLB_METRICS_TOKEN", "scrape-token-123")
    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out
    assert "scrape-token-123" not in text and 'metrics_token = "<redacted>"' in text


@pytest.mark.parametrize(
    ("env", "flags", "expected"),
    [
        ({"CODEXLB_PORT": "abc"}, [], "invalid setting 'port' from CODEXLB_PORT: 'abc' is not an integer"),
        ({"CODEXLB_PORT": "70000"}, [], "invalid setting 'port' from CODEXLB_PORT: must be between 0 and 65535"),
        ({}, ["--log-level", "loud"], "invalid setting 'log_level' from --log-level"),
        ({}, ["--upstream-base-url", "ftp://x"], "invalid setting 'upstream_base_url' from --upstream-base-url"),
        ({"CODEXLB_DRAIN_TIMEOUT_S": "-1"}, [], "invalid setting 'drain_timeout_s' from CODEXLB_DRAIN_TIMEOUT_S"),
    ],
)
def test_bad_values_are_one_line_errors(capsys, env, flags, expected, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["config", "show", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("codexlb: error: ")
    assert expected in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("prot = 1\n", "unknown setting 'prot' in config file"),
        ("port = \"2455\"\n", "invalid setting 'port' from config file"),
        ("port = true\n", "invalid setting 'port' from config file"),
        ("port = [\n", "is not valid TOML"),
    ],
)
def test_bad_files_are_one_line_errors(capsys, tmp_path, text, expected):
    path = tmp_path / "c.toml"
    path.write_text(text)
    assert main(["config", "show", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err


def test_missing_explicit_config_is_an_error(capsys, tmp_path):
    assert main(["config", "show", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_bad_env_value_exits_nonzero_as_a_process(tmp_path):
    """The acceptance case as a user meets it: a real process, one line naming the setting."""
    env = child_env()
    env.update(CODEXLB_PORT="abc", HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "codexlb", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr == "codexlb: error: invalid setting 'port' from CODEXLB_PORT: 'abc' is not an integer\n"
    assert not (tmp_path / ".codexlb").exists()


@pytest.mark.parametrize(
    ("flags", "env", "file", "expected", "source"),
    [
        ([], {}, None, False, "default"),
        (["--allow-unauthenticated"], {}, None, True, "--allow-unauthenticated"),  # a bare bool flag means true
        (["--allow-unauthenticated", "true"], {}, None, True, "--allow-unauthenticated"),
        (["--allow-unauthenticated", "false"], {"CODEXLB_ALLOW_UNAUTHENTICATED": "yes"}, None, False,
         "--allow-unauthenticated"),
        (["--allow-unauthenticated=off"], {}, None, False, "--allow-unauthenticated"),
        ([], {"CODEXLB_ALLOW_UNAUTHENTICATED": "1"}, None, True, "CODEXLB_ALLOW_UNAUTHENTICATED"),
        ([], {}, "allow_unauthenticated = true\n", True, "config file"),
        # Lists: a TOML array in the file, comma-separated in the variable and the flag.
        ([], {}, None, [], "default"),
        ([], {}, 'allowed_hosts = ["lb.example.com", "*.lan.example"]\n', ["lb.example.com", "*.lan.example"],
         "config file"),
        ([], {"CODEXLB_ALLOWED_HOSTS": "lb.example.com, *.lan.example,"}, None, ["lb.example.com", "*.lan.example"],
         "CODEXLB_ALLOWED_HOSTS"),
        (["--allowed-hosts", "a.example"], {"CODEXLB_ALLOWED_HOSTS": "b.example"}, None, ["a.example"],
         "--allowed-hosts"),
        ([], {"CODEXLB_ALLOWED_HOSTS": ""}, 'allowed_hosts = ["a.example"]\n', [], "CODEXLB_ALLOWED_HOSTS"),
    ],
)
def test_boolean_and_list_settings(capsys, tmp_path, monkeypatch, flags, env, file, expected, source):
    name = "allowed_hosts" if isinstance(expected, list) else "allow_unauthenticated"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if file is not None:
        write_config(tmp_path / "d", file)
    out = show(capsys, "--data-dir", str(tmp_path / "d"), *flags)
    assert out["settings"][name] == expected and type(out["settings"][name]) is type(expected)
    assert out["sources"][name].startswith(source)


@pytest.mark.parametrize(
    ("args", "text", "expected"),
    [
        (["--allow-unauthenticated", "maybe"], None,
         "invalid setting 'allow_unauthenticated' from --allow-unauthenticated: 'maybe' is not a boolean"),
        ([], 'allow_unauthenticated = "true"\n', "invalid setting 'allow_unauthenticated' from config file"),
        ([], 'allowed_hosts = "a.example"\n', "'a.example' is not an array of strings"),
        ([], "allowed_hosts = [1]\n", "[1] is not an array of strings"),
        (["--allowed-hosts", "lb.example.com:443"], None,
         "invalid setting 'allowed_hosts' from --allowed-hosts: 'lb.example.com:443' is not a host name"),
        (["--allowed-hosts", "https://lb.example.com"], None, "'https://lb.example.com' is not a host name"),
        (["--trusted-proxies", "10.0.0.1,proxy.lan"], None,
         "invalid setting 'trusted_proxies' from --trusted-proxies: 'proxy.lan' is not an IP address or network"),
        ([], 'trusted_proxies = ["10.0.0.0/33"]\n', "'10.0.0.0/33' is not an IP address or network"),
    ],
)
def test_bad_booleans_and_lists_are_one_line_errors(capsys, tmp_path, args, text, expected):
    if text is not None:
        write_config(tmp_path / "d", text)
    assert main(["config", "show", "--data-dir", str(tmp_path / "d"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
