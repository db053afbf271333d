"""Settings: the one place defaults live, and how they are overridden.

Precedence, lowest to highest: built-in defaults < TOML file < environment
(`CODEXLB_<NAME>`) < command-line flags (`--name-with-dashes`). Every setting
is a field of `Settings`; the file keys, variables and flags are derived from
the field names, so adding a setting is adding one field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

from yarl import URL

from codexlb.host_check import check_allowed_hosts, check_listen_host
from codexlb.trusted_proxies import check_trusted_proxies

ENV_PREFIX = "CODEXLB_"
CONFIG_ENV = "CODEXLB_CONFIG"
CONFIG_FILE_NAME = "config.toml"
REDACTED = "<redacted>"
# The names the `strategy` setting takes; `codexlb.pool.selection` implements each.
STRATEGIES: tuple[str, ...] = ("capacity", "round_robin", "fill_first", "least_used")
# The `upstream_proxy` value that ignores the environment's proxy.
DIRECT = "direct"
_PROXY_SCHEMES = ("http", "https")


def proxy_url(value: str) -> URL:
    """An HTTP(S) proxy URL, or ValueError saying what is wrong with it."""
    try:
        url = URL(value)
    except ValueError:
        raise ValueError("is not a URL") from None
    if url.scheme not in _PROXY_SCHEMES or not url.host:
        raise ValueError("must be an http:// or https:// proxy URL with a host (SOCKS proxies are not supported)")
    return url


def check_proxy_setting(value: str) -> None:
    if value not in ("", DIRECT):
        try:
            proxy_url(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, or 'direct'") from None


def check_database_url(value: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or "host=" in parts.query):
        raise ValueError("must be empty (the SQLite file in the data dir) or a postgresql://user:password@host/db URL")
    try:
        parts.port
    except ValueError:
        raise ValueError("has a port that is not a number") from None


class ConfigError(Exception):
    """A setting could not be read; the message names it and fits on one line."""


def _check_port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")


def _check_non_negative(value: float) -> None:
    if value < 0:
        raise ValueError("must not be negative")


def _check_positive(value: float) -> None:
    if value <= 0:
        raise ValueError("must be greater than 0")


def _check_at_least_one(value: int) -> None:
    if value < 1:
        raise ValueError("must be at least 1")


MAX_WORKERS = 64


def _check_workers(value: int) -> None:
    # More processes than that is a typo (or a fork bomb), not a machine's cores.
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"must be between 1 and {MAX_WORKERS}")


def _check_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")


# The sections settings are grouped by in `codexlb serve --help`, in order, each with what it is about.
SECTIONS: dict[str, str] = {
    "listening": "who can reach codexlb, and how long a client connection may take",
    "upstream": "the ChatGPT backend and the sign-in server, and failing over between accounts",
    "pool": "how accounts are chosen and kept fresh",
    "admission": "how much runs at once; past it requests wait a bounded time, then get 429",
    "bridge": "the Codex CLI's conversations over upstream WebSockets, and their transcripts",
    "storage": "the data dir, the sealing key and the request log",
    "logging": "what is logged, and how",
}


def setting(
    section: str,
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], None] | None = None,
    secret: bool = False,
    metavar: str | None = None,
    reloads: bool = False,
) -> Any:
    """`reloads`: a running server applies a change of it in place on SIGHUP (`codexlb reload`); any other
    setting changes only with a new process (`codexlb upgrade`, or a restart)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown settings section {section!r}")
    return field(
        default=default,
        metadata={"section": section, "help": help, "choices": choices, "check": check, "secret": secret,
                  "metavar": metavar, "reloads": reloads},
    )


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = setting(
        "listening", "127.0.0.1", "Address to listen on.", check=check_listen_host, metavar="ADDR")
    port: int = setting(
        "listening", 2455, "TCP port to listen on (0 picks a free one).", check=_check_port)
    allowed_hosts: tuple[str, ...] = setting(
        "listening",
        (), "More names the dashboard, the admin API and (while no API key exists) the proxy routes answer to "
        "(Host header), besides localhost, IP addresses "
        "and the listen address: exact names, or *.example.com for every name under a domain; the port is not "
        "compared. Others get 421, against DNS rebinding.", check=check_allowed_hosts, metavar="NAME,...",
    )
    trusted_proxies: tuple[str, ...] = setting(
        "listening", (), "Reverse proxies (IP addresses or networks such as 10.0.0.0/8) whose forwarding headers "
        "(X-Forwarded-For, Forwarded, X-Real-IP) name the client, for login limits and logs; from any other "
        "peer they are not believed.", check=check_trusted_proxies, metavar="ADDR,...",
    )
    allow_unauthenticated: bool = setting(
        "listening", False, "While no API key exists, serve clients on any address, not just this machine; without it, "
        "serve refuses to listen on a non-loopback address until a key exists.",
    )
    data_dir: Path = setting(
        "storage", Path("~/.codexlb"),
        "Where the database, secret key and config.toml live (created with mode 0700).",
        metavar="DIR",
    )
    upstream_base_url: str = setting(
        "upstream", "https://chatgpt.com/backend-api",
        "Base URL of the ChatGPT backend (or of `codexlb sim`).",
        check=_check_url,
        metavar="URL",
    )
    auth_base_url: str = setting(
        "upstream", "https://auth.openai.com", "Base URL of the OAuth server used for login and token refresh.",
        check=_check_url, metavar="URL",
    )
    upstream_proxy: str = setting(
        "upstream",
        "", "HTTP(S) proxy for calls to upstream and the OAuth server: empty follows HTTPS_PROXY / HTTP_PROXY / "
        "ALL_PROXY and NO_PROXY (never for this machine); a URL (user:password@ allowed) is used for every call; "
        "'direct' ignores the environment.", check=check_proxy_setting, metavar="URL",
    )
    log_level: str = setting(
        "logging", "info", "Lowest level that is logged.", choices=("debug", "info", "warning", "error"), reloads=True)
    log_format: str = setting(
        "logging", "auto", "Log line format; auto is console on a terminal, JSON lines otherwise.",
        choices=("auto", "console", "json"), reloads=True,
    )
    database_url: str = setting(
        "storage", "", "Where durable state lives: empty is the SQLite file in the data dir; a "
        "postgresql://user:password@host:port/db URL shares it between replicas (see Running several replicas).",
        check=check_database_url, metavar="URL",
    )
    secret_key: str | None = setting(
        "storage", None, "The key that seals tokens at rest, base64 (32 bytes), instead of a key file: give every "
        "replica of a fleet the same one. Best set in the environment, not on the command line.",
        secret=True, metavar="BASE64",
    )
    secret_key_file: Path | None = setting(
        "storage", None, "Key that seals tokens at rest (default: <data-dir>/secret.key, created on first start).",
        metavar="PATH",
    )
    strategy: str = setting(
        "pool", "capacity", "How to pick an account: capacity (most remaining quota, earliest reset first), "
        "round_robin, fill_first or least_used.",
        choices=STRATEGIES, reloads=True,
    )
    sticky_ttl_s: float = setting(
        "pool", 3600.0, "How long a conversation stays on its account after its last request.",
        check=_check_non_negative, metavar="SECONDS", reloads=True,
    )
    refresh_margin_s: float = setting(
        "pool", 600.0, "Refresh an access token this long before it expires.", check=_check_non_negative,
        metavar="SECONDS",
    )
    usage_poll_interval_s: float = setting(
        "pool", 120.0, "How often each account's usage windows are read from upstream (0 turns polling off).",
        check=_check_non_negative, metavar="SECONDS",
    )
    max_body_mb: float = setting(
        "listening",
        16.0, "Largest request body accepted, in MiB (the Codex CLI gets a 400 for more, since it retries 413s).",
        check=_check_positive, metavar="MIB", reloads=True,
    )
    upstream_connect_timeout_s: float = setting(
        "upstream", 10.0, "Bound on connecting to upstream.", check=_check_positive, metavar="SECONDS",
    )
    upstream_first_event_timeout_s: float = setting(
        "upstream", 120.0, "Bound on waiting for upstream's first event; past it, the next account is tried.",
        check=_check_positive, metavar="SECONDS", reloads=True,
    )
    upstream_idle_timeout_s: float = setting(
        "upstream", 300.0, "Bound on silence between upstream events once a stream runs.", check=_check_positive,
        metavar="SECONDS", reloads=True,
    )
    failover_accounts: int = setting(
        "upstream",
        3, "Most accounts one request is tried on before the client gets an error.", check=_check_at_least_one,
        metavar="N", reloads=True,
    )
    failover_budget_s: float = setting(
        "upstream", 60.0, "Most time spent failing over before the client gets an error.", check=_check_positive,
        metavar="SECONDS", reloads=True,
    )
    keepalive_s: float = setting(
        "upstream", 10.0, "While the first event is awaited longer than this, send keep-alives this often (commits the "
        "answer: no failover after the first one).", check=_check_positive, metavar="SECONDS", reloads=True,
    )
    max_inflight: int = setting(
        "admission", 512, "Most proxied requests served at once (an open WebSocket counts as one); more wait in line.",
        check=_check_at_least_one, metavar="N", reloads=True,
    )
    queue_wait_s: float = setting(
        "admission", 10.0, "Longest a request waits in line at a full gate before it gets 429 proxy_overloaded with "
        "Retry-After.", check=_check_non_negative, metavar="SECONDS", reloads=True,
    )
    max_queue: int = setting(
        "admission", 1024, "Most requests waiting in line at one gate; past it, a newcomer gets 429 at once.",
        check=_check_non_negative, metavar="N", reloads=True,
    )
    account_max_streams: int = setting(
        "pool", 16, "Most streams at once on one account; a new conversation goes to another with room, a placed "
        "one waits for its own.",
        check=_check_at_least_one, metavar="N", reloads=True,
    )
    max_upstream_connects: int = setting(
        "admission",
        32, "Most upstream WebSocket connects in progress at once.", check=_check_at_least_one, metavar="N",
        reloads=True,
    )
    max_refreshes: int = setting(
        "admission", 4, "Most token refreshes in progress at once.", check=_check_at_least_one, metavar="N",
        reloads=True,
    )
    http_bridge: bool = setting(
        "bridge", True, "Carry the Codex CLI's HTTP requests over one upstream WebSocket per conversation, sending "
        "only new items upstream (the CLI resends the whole conversation over HTTP).",
    )
    bridge_max_sessions: int = setting(
        "bridge", 512, "Most conversations with an upstream WebSocket of their own; past it, the least recently used "
        "idle one is let go.", check=_check_at_least_one, metavar="N",
    )
    bridge_idle_ttl_s: float = setting(
        "bridge", 600.0, "How long a conversation's upstream WebSocket is kept without a request.",
        check=_check_positive, metavar="SECONDS",
    )
    transcript_max_mb: float = setting(
        "bridge", 256.0, "Memory for the transcripts that let a WebSocket conversation go on when upstream lost its "
        "state (MiB, all conversations; the least recently used go first).", check=_check_positive, metavar="MIB",
    )
    transcript_conversation_max_mb: float = setting(
        "bridge", 32.0, "Transcript memory for one conversation (MiB; its oldest responses go first).",
        check=_check_positive, metavar="MIB",
    )
    request_log_days: float = setting(
        "storage", 30.0, "Days the request log (one row per proxied request) is kept (0: no age limit).",
        check=_check_non_negative, metavar="DAYS",
    )
    request_log_max_rows: int = setting(
        "storage", 1_000_000, "Most rows the request log keeps; the oldest go first (0: no limit).",
        check=_check_non_negative, metavar="N",
    )
    metrics_token: str | None = setting(
        "listening",
        None, "A bearer token that lets a Prometheus on another machine scrape /metrics (and nothing else); "
        "unset, /metrics follows the admin API's rule.", secret=True, metavar="TOKEN", reloads=True,
    )
    header_timeout_s: float = setting(
        "listening",
        60.0, "Longest a client connection may take to send a request's headers, counted from its opening or the "
        "end of its previous response (so also how long an idle keep-alive connection is kept); then it is closed.",
        check=_check_positive, metavar="SECONDS",
    )
    body_timeout_s: float = setting(
        "listening", 60.0, "Longest a request body may pause between two reads; then the request gets 408.",
        check=_check_positive, metavar="SECONDS", reloads=True,
    )
    workers: int = setting(
        "listening", 1, "Processes serving the port, each a full replica (1: one process, no supervisor).",
        check=_check_workers, metavar="N",
    )
    drain_timeout_s: float = setting(
        "listening", 600.0, "Seconds in-flight requests get to finish after SIGTERM/SIGINT or an upgrade before they "
        "are cut (a Codex turn can stream for minutes; a drain ends as soon as nothing is in flight).",
        check=_check_non_negative, metavar="SECONDS",
    )
    drain_pause_s: float = setting(
        "listening", 0.0, "Seconds after SIGTERM/SIGINT that readiness fails while the port still accepts, before "
        "the drain: time for a front door's health check to stop sending new connections here.",
        check=_check_non_negative, metavar="SECONDS",
    )


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(Settings)


def _base_type(hint: Any) -> type:
    """`Path | None` is a Path that may be left unset; `tuple[str, ...]` is a list of strings."""
    if typing.get_origin(hint) is tuple:
        return tuple
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


_TYPES: dict[str, type] = {name: _base_type(hint) for name, hint in typing.get_type_hints(Settings).items()}
_OPTIONAL = {f.name for f in FIELDS if f.default is None}
# The settings a running server changes in place on SIGHUP (`setting(..., reloads=True)`).
RELOADABLE: frozenset[str] = frozenset(f.name for f in FIELDS if f.metadata["reloads"])


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def type_of(name: str) -> type:
    return _TYPES[name]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_text(kind: type, text: str) -> Any:
    """Parse an environment variable or flag value."""
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"{text!r} is not a boolean (use true or false)")
    if kind is int:
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
    if kind is float:
        try:
            return float(text.strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
    if kind is Path:
        if not text.strip():
            raise ValueError("must not be empty")
        return Path(text)
    if kind is tuple:
        # A list in one variable or flag: comma-separated, spaces around items ignored, empty is none.
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return text


def _from_toml(kind: type, value: Any) -> Any:
    """Check a TOML value's type; TOML already knows ints from strings."""
    # bool is an int subclass in Python, but `port = true` is a mistake, not 1.
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (str, Path) and isinstance(value, str):
        return _from_text(kind, value)
    if kind is tuple and isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(item.strip() for item in value)
    expected = {bool: "a boolean", int: "an integer", float: "a number", tuple: "an array of strings"}.get(
        kind, "a string")
    raise ValueError(f"{value!r} is not {expected}")


def _validate(f: dataclasses.Field, value: Any) -> Any:
    if value is None and f.name in _OPTIONAL:
        return None
    if isinstance(value, Path):
        value = value.expanduser().absolute()
    choices = f.metadata["choices"]
    if choices is not None:
        value = str(value).lower()
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
    check = f.metadata["check"]
    if check is not None:
        check(value)
    return value


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    known = {f.name for f in FIELDS}
    for key in data:
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} in config file {path}")
    return data


@dataclass(frozen=True, slots=True)
class Loaded:
    settings: Settings
    sources: dict[str, str]
    config_file: Path | None
    # What `load` was given, so that a reload reads the same layers again (the flags keep winning).
    flags: Mapping[str, str] = field(default_factory=dict)
    config_path: str | None = None

    def again(self, env: Mapping[str, str] | None = None) -> "Loaded":
        """The settings read afresh from the same flags and config path (blocks: reads the file)."""
        return load(self.flags, env, self.config_path)


@dataclass(frozen=True, slots=True)
class Reload:
    """What a reload does to the running settings."""

    settings: Settings  # the running ones with every reloadable change made
    applied: tuple[str, ...]  # reloadable settings that changed
    need_upgrade: tuple[str, ...]  # changed settings that only a new process applies


def plan_reload(running: Settings, read: Settings) -> Reload:
    changed = [f.name for f in FIELDS if getattr(running, f.name) != getattr(read, f.name)]
    applied = tuple(name for name in changed if name in RELOADABLE)
    return Reload(dataclasses.replace(running, **{name: getattr(read, name) for name in applied}), applied,
                  tuple(name for name in changed if name not in RELOADABLE))


def data_dir_of(flags: Mapping[str, str], env: Mapping[str, str] | None = None) -> Path:
    """The data dir as `load` finds it (flag, environment, default), without reading the config file there: for
    a command that only needs to find the server, whatever state that file is in. Raises ConfigError."""
    env = os.environ if env is None else env
    data_dir_field = next(f for f in FIELDS if f.name == "data_dir")
    raw = flags.get("data_dir", env.get(env_name("data_dir")))
    try:
        return _validate(data_dir_field, data_dir_field.default if raw is None else _from_text(Path, raw))
    except ValueError as exc:
        raise ConfigError(f"invalid setting 'data_dir': {exc}") from None


def load(flags: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None,
         config_path: str | None = None) -> Loaded:
    """Resolve settings from all layers.

    `flags` maps setting names to the raw strings given on the command line
    (only the ones given); `config_path` is `--config`. Raises ConfigError.
    """
    flags = dict(flags or {})
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def put(f: dataclasses.Field, raw: Any, source: str, parse: Callable[[type, Any], Any]) -> None:
        if f.name in _OPTIONAL and raw == "":
            raw, parse = None, lambda _kind, v: v
        try:
            values[f.name] = _validate(f, parse(_TYPES[f.name], raw))
        except ValueError as exc:
            raise ConfigError(f"invalid setting {f.name!r} from {source}: {exc}") from None
        sources[f.name] = source

    for f in FIELDS:
        put(f, f.default, "default", lambda _kind, v: v)

    # The file lives in the data dir, so the data dir cannot come from the file
    # that it locates; flags and environment decide where to look.
    data_dir_field = next(f for f in FIELDS if f.name == "data_dir")
    if "data_dir" in flags:
        put(data_dir_field, flags["data_dir"], flag_name("data_dir"), _from_text)
    elif env_name("data_dir") in env:
        put(data_dir_field, env[env_name("data_dir")], env_name("data_dir"), _from_text)

    explicit = config_path or env.get(CONFIG_ENV)
    config_file = Path(explicit).expanduser() if explicit else values["data_dir"] / CONFIG_FILE_NAME
    if explicit or config_file.is_file():
        for key, raw in _read_file(config_file).items():
            f = next(f for f in FIELDS if f.name == key)
            put(f, raw, f"config file {config_file}", _from_toml)
    else:
        config_file = None

    for f in FIELDS:
        if env_name(f.name) in env:
            put(f, env[env_name(f.name)], env_name(f.name), _from_text)
    for f in FIELDS:
        if f.name in flags:
            put(f, flags[f.name], flag_name(f.name), _from_text)

    return Loaded(Settings(**values), sources, config_file, flags, config_path)


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def public_view(settings: Settings) -> dict[str, Any]:
    """Settings as plain data with secrets masked: for `config show` and logs."""
    out: dict[str, Any] = {}
    for f in FIELDS:
        value = getattr(settings, f.name)
        if f.metadata["secret"] and value is not None:
            value = REDACTED
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, str) and "://" in value:
            value = _redact_url(value)
        out[f.name] = value
    return out
