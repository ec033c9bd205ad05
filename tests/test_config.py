"""Tests of rtbus.config: the settings table, loading, Config, and the generated documents."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re

import pytest

from rtbus import config as cfg
from rtbus.config import BY_NAME, MIB, SETTINGS, Config, Invocation, build_parser, load_config
from rtbus.config.loader import _invalid
from rtbus.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load_renderer():
    """tools/render_config.py, which lives outside the package, loaded as a module."""
    spec = importlib.util.spec_from_file_location("render_config", REPO / "tools" / "render_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _load_renderer()
render_markdown, render_sample_conf = render.render_markdown, render.render_sample_conf


def load(argv=(), env=None, **kwargs) -> Config:
    return load_config(list(argv), {} if env is None else env, **kwargs).config


@pytest.fixture
def conf(tmp_path):
    """Write an INI file (an [options] section unless `raw`) and return its path."""
    def write(body: str = "", *, raw: bool = False, name: str = "rtbus.conf") -> str:
        path = tmp_path / name
        path.write_text(body if raw else "[options]\n" + body, encoding="utf-8")
        return str(path)
    return write


def config_error(argv=(), env=None, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load(argv, env, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the table ------------------------------------------------------------------------------


def test_table_is_consistent():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    flags = [f for s in SETTINGS for f in s.flags]
    assert len(flags) == len(set(flags))
    for setting in SETTINGS:
        assert setting.coerce(setting.default) == setting.default, setting.name
        assert setting.help.endswith("."), setting.name
        assert setting.section, setting.name
        if setting.cli:
            assert "--" + setting.name.replace("_", "-") in setting.flags, setting.name


def test_defaults():
    invocation = load_config([], {})
    config = invocation.config
    assert invocation == Invocation(config, "serve", ())
    assert config == Config.defaults()
    assert config.notes == () and config.config_file is None
    assert config.workers == 0 and config.max_cron_threads == 1
    assert config.http_interface == "127.0.0.1" and config.http_port == 8069
    assert config.gevent_port == 8072 and config.proxy_mode is False
    assert config.graceful_timeout == 30.0 and config.http_socket_timeout == 2.0
    assert config.limit_memory_soft == 2048 * MIB and config.limit_memory_hard == 2560 * MIB
    assert config.limit_time_real_cron == -1 and config.limit_request == 65536
    assert config.db_host is None and config.db_sslmode == "prefer"
    assert config.db_maxconn == 64 and config.db_pool_timeout == 1.0
    assert config.imbus_db_name == "postgres" and config.notify_function == "pg_notify"
    assert config.mailbox_max_bytes == 4 * MIB and config.budget_check == "error"
    assert config.log_level == "info" and config.logfile is None
    assert {config.source(s.name) for s in SETTINGS} == {"default"}


def test_unknown_attribute_and_frozen():
    config = Config.defaults()
    with pytest.raises(AttributeError):
        config.no_such_setting
    with pytest.raises(AttributeError):
        config.workers = 3
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        config.get("nope")
    assert config.get("workers") == 0


# --- precedence -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, flag, file_raw, env_raw, cli_raw, file_v, env_v, cli_v", [
    ("workers", "--workers", "2", "3", "4", 2, 3, 4),
    ("proxy_mode", "--proxy-mode", "True", "no", None, True, False, True),
    ("limit_memory_soft", "--limit-memory-soft", "1G", "512m", "1048576",
     1024 * MIB, 512 * MIB, MIB),
    ("log_level", "--log-level", "debug", "ERROR", "warn", "debug", "error", "warning"),
    ("db_pool_timeout", "--db-pool-timeout", "2.5", "3", "0.25", 2.5, 3.0, 0.25),
    ("db_host", "--db-host", "file-host", "env-host", "cli-host",
     "file-host", "env-host", "cli-host"),
])
def test_file_env_cli_precedence(conf, name, flag, file_raw, env_raw, cli_raw,
                                 file_v, env_v, cli_v):
    path = conf(f"{name} = {file_raw}\n")
    env_name = f"RTBUS_{name.upper()}"
    cli = [flag] if cli_raw is None else [flag, cli_raw]

    config = load(["-c", path])
    assert (config.get(name), config.source(name)) == (file_v, f"file {path}")
    config = load(["-c", path], {env_name: env_raw})
    assert (config.get(name), config.source(name)) == (env_v, f"env {env_name}")
    config = load(["-c", path, *cli], {env_name: env_raw})
    assert (config.get(name), config.source(name)) == (cli_v, f"command line {flag}")
    assert config.config_file == path


def test_path_values_become_absolute():
    config = load(["--pidfile", "run/rtbus.pid", "--logfile", "~/rtbus.log"])
    assert config.pidfile == os.path.abspath("run/rtbus.pid")
    assert config.logfile == os.path.join(os.path.expanduser("~"), "rtbus.log")


def test_config_file_from_environment_and_flag(conf):
    from_env = conf("workers = 2\n", name="env.conf")
    from_flag = conf("workers = 5\n", name="flag.conf")
    assert load([], {"RTBUS_CONFIG": from_env}).workers == 2
    assert load(["--config", from_flag], {"RTBUS_CONFIG": from_env}).workers == 5


def test_pg_environment_and_rtbus_names_win():
    env = {"PGHOST": "pg-host", "PGPORT": "6543", "PGUSER": "pg-user",
           "PGPASSWORD": "pg-secret", "PGDATABASE": "a,b"}
    config = load([], env)
    assert (config.db_host, config.db_port, config.db_user) == ("pg-host", 6543, "pg-user")
    assert (config.db_password, config.db_name) == ("pg-secret", "a,b")
    assert config.source("db_port") == "env PGPORT"

    config = load([], {**env, "RTBUS_DB_HOST": "rtbus-host", "RTBUS_DB_PORT": "7000"})
    assert (config.db_host, config.db_port) == ("rtbus-host", 7000)
    assert config.source("db_host") == "env RTBUS_DB_HOST"
    assert config.db_user == "pg-user"


def test_odoo_environment_names():
    config = load([], {"ODOO_NOTIFY_FUNCTION": "bus.notify",
                       "ODOO_NOTIFY_PAYLOAD_MAX_LENGTH": "4000",
                       "RTBUS_NOT_A_SETTING": "ignored"})
    assert (config.notify_function, config.notify_payload_max_length) == ("bus.notify", 4000)
    assert config.notes == ()


def test_empty_environment_value_does_not_override_the_file(conf):
    path = conf("db_host = file-host\n")
    assert load(["-c", path], {"PGHOST": "", "RTBUS_DB_HOST": ""}).db_host == "file-host"


def test_none_on_the_command_line_restores_the_default(conf):
    path = conf("pidfile = /run/rtbus.pid\nworkers = 4\n")
    config = load(["-c", path, "--pidfile", "None", "--workers="])
    assert (config.pidfile, config.workers) == (None, 0)
    assert config.source("pidfile") == "command line --pidfile"


# --- the configuration file -----------------------------------------------------------------


def test_odoo_style_false_and_none_in_files(conf):
    path = conf("db_host = False\ndb_port = None\ndb_user = NONE\npidfile =\n"
                "proxy_mode = False\nlimit_memory_soft_gevent = False\nworkers = 3\n")
    config = load(["-c", path])
    assert config.db_host is None and config.db_port is None and config.db_user is None
    assert config.pidfile is None and config.limit_memory_soft_gevent is None
    assert config.proxy_mode is False and config.source("proxy_mode") == f"file {path}"
    assert config.source("db_host") == "default"
    assert config.workers == 3
    assert config.notes == ()


def test_unknown_key_gets_a_note(conf):
    path = conf("foo = 1\nworkers = 2\n")
    config = load(["-c", path])
    assert config.notes == (f"unknown option 'foo' in {path} (ignored)",)
    assert config.workers == 2


def test_other_sections_are_ignored(conf):
    path = conf("[queue_job]\nworkers = 9\nchannels = root:2\n"
                "[DEFAULT]\nlog_level = debug\n"
                "[options]\nworkers = 2\nno_interpolation = 100%(x)s\n", raw=True)
    config = load(["-c", path])
    assert (config.workers, config.log_level) == (2, "info")
    assert config.notes == (f"unknown option 'no_interpolation' in {path} (ignored)",)


def test_file_without_options_section_gets_a_note(conf):
    path = conf("[queue_job]\nworkers = 9\n", raw=True)
    config = load(["-c", path])
    assert config.workers == 0
    assert config.notes == (f"configuration file {path} has no [options] section; "
                            f"nothing read from it",)


@pytest.mark.parametrize("body, expected", [
    ("workers = 1\n", "line 1: a setting before any [section] header"),
    ("[options]\nworkers = 1\nworkers = 2\n", "line 3: 'workers' appears twice in [options]"),
    ("[options]\n[options]\n", "line 2: section [options] appears twice"),
    ("[options]\nworkers 1\n", "cannot parse line 2"),
])
def test_malformed_file(conf, body, expected):
    path = conf(body, raw=True)
    message = config_error(["-c", path])
    assert message.startswith(f"malformed configuration file {path}: ")
    assert expected in message


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.conf"
    assert config_error(["-c", str(missing)]) == (
        f"cannot read configuration file {missing}: No such file or directory")
    assert "Is a directory" in config_error(["-c", str(tmp_path)])
    binary = tmp_path / "binary.conf"
    binary.write_bytes(b"[options]\nworkers = \xff\n")
    assert config_error(["-c", str(binary)]) == f"configuration file {binary} is not valid UTF-8"
    assert "cannot read configuration file" in config_error([], {"RTBUS_CONFIG": str(missing)})


# --- gevent_port / longpolling_port ---------------------------------------------------------


def test_longpolling_port_alone(conf):
    path = conf("longpolling_port = 8078\n")
    config = load(["-c", path])
    assert (config.gevent_port, config.source("gevent_port")) == (8078, f"file {path}")
    assert config.notes == (f"gevent_port = 8078 (set by longpolling_port in {path}; "
                            f"longpolling_port is an alias of gevent_port)",)

    config = load(["--longpolling-port", "8079"])
    assert (config.gevent_port, config.source("gevent_port")) == (
        8079, "command line --longpolling-port")
    assert "set by --longpolling-port on the command line" in config.notes[0]

    assert load(["--longpolling_port=8080"]).gevent_port == 8080
    assert load([], {"RTBUS_LONGPOLLING_PORT": "8081"}).gevent_port == 8081


def test_both_names_with_equal_values(conf):
    path = conf("gevent_port = 8078\nlongpolling_port = 8078\n")
    assert load(["-c", path]).gevent_port == 8078
    config = load(["--longpolling-port", "9000", "--gevent-port", "9000"])
    assert (config.gevent_port, config.source("gevent_port")) == (
        9000, "command line --gevent-port")


@pytest.mark.parametrize("level, names", [
    ("file", ("gevent_port in", "longpolling_port in")),
    ("cli", ("--gevent-port", "--longpolling-port")),
    ("env", ("RTBUS_GEVENT_PORT", "RTBUS_LONGPOLLING_PORT")),
])
def test_both_names_with_different_values_at_one_level(conf, level, names):
    argv, env = [], {}
    if level == "file":
        argv = ["-c", conf("gevent_port = 8072\nlongpolling_port = 8078\n")]
    elif level == "cli":
        argv = ["--gevent-port", "8072", "--longpolling-port", "8078"]
    else:
        env = {"RTBUS_GEVENT_PORT": "8072", "RTBUS_LONGPOLLING_PORT": "8078"}
    message = config_error(argv, env)
    assert message.startswith("conflicting values for gevent_port: ")
    assert f"{names[0]}" in message and f"{names[1]}" in message
    assert "gives 8072" in message and "gives 8078" in message


def test_names_across_levels_follow_precedence(conf):
    path = conf("longpolling_port = 8078\n")
    config = load(["-c", path, "--gevent-port", "9000"])
    assert (config.gevent_port, config.source("gevent_port")) == (
        9000, "command line --gevent-port")
    assert config.notes == ("gevent_port = 9000 (set by --gevent-port on the command line; "
                            "longpolling_port is an alias of gevent_port)",)

    path = conf("gevent_port = 8078\n")
    config = load(["-c", path], {"RTBUS_LONGPOLLING_PORT": "8090"})
    assert (config.gevent_port, config.source("gevent_port")) == (
        8090, "env RTBUS_LONGPOLLING_PORT")
    assert "set by RTBUS_LONGPOLLING_PORT in the environment" in config.notes[0]


# --- bad values and flags -------------------------------------------------------------------


@pytest.mark.parametrize("setting, raw, expected", [
    ("workers", "two", "an integer >= 0"),
    ("workers", "-1", "an integer >= 0"),
    ("db_sslmode", "sometimes", "one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("limit_memory_soft", "2TB", "a size in bytes"),
    ("limit_memory_soft", "1.5", "a size in bytes"),
    ("http_port", "-1", "an integer between 0 and 65535"),
    ("gevent_port", "65536", "an integer between 0 and 65535"),
    ("db_maxconn", "0", "an integer >= 1"),
    ("graceful_timeout", "nan", "a number >= 0"),
    ("proxy_mode", "maybe", "a boolean"),
    ("notify_function", "pg_notify; drop table x", "SQL identifier"),
])
def test_bad_values_name_setting_and_source(conf, setting, raw, expected):
    path = conf(f"{setting} = {raw}\n")
    message = config_error(["-c", path])
    assert message == (f"invalid value {raw!r} for {setting} from {setting} in {path}: "
                       f"expected " + message.split("expected ", 1)[1])
    assert expected in message

    env_name = f"RTBUS_{setting.upper()}"
    message = config_error([], {env_name: raw})
    assert f"for {setting} from {env_name} in the environment" in message


def test_bad_value_on_the_command_line():
    message = config_error(["--http-port", "-1"])
    assert message == ("invalid value '-1' for http_port from --http-port on the command line: "
                       "expected an integer between 0 and 65535")
    assert "from -p on the command line" in config_error(["-p", "http"])


def test_secret_values_are_not_echoed_in_errors():
    message = config_error([], {"PGPASSWORD": "s3cret", "RTBUS_DB_PORT": "x"})
    assert "s3cret" not in message
    setting = BY_NAME["db_password"]
    assert "s3cret" not in _invalid(setting, "s3cret", "somewhere")


def test_argparse_errors_become_config_errors():
    assert config_error(["--bogus"]) == "unrecognized arguments: --bogus (see rtbus-server --help)"
    assert "expected one argument" in config_error(["--workers"])
    assert "--work" in config_error(["--work", "3"])        # no abbreviations
    assert config_error(["frobnicate"]) == (
        "unknown command 'frobnicate' (expected one of: serve)")


# --- command line ---------------------------------------------------------------------------


def test_commands_and_intermixed_options():
    invocation = load_config(["--workers", "2", "gevent", "a", "--db_maxconn", "3", "b"], {},
                             commands=("serve", "gevent"))
    assert (invocation.command, invocation.args) == ("gevent", ("a", "b"))
    assert (invocation.config.workers, invocation.config.db_maxconn) == (2, 3)
    assert invocation.config.source("db_maxconn") == "command line --db_maxconn"
    invocation = load_config(["serve", "--", "--not-a-flag"], {})
    assert (invocation.command, invocation.args) == ("serve", ("--not-a-flag",))


def test_flag_spellings():
    config = load(["-d", "one,two", "-r", "bus", "-w", "pw", "--proxy-mode",
                   "--limit-time-real-cron", "-1", "--db_sslmode", "require"])
    assert (config.db_name, config.db_user, config.db_password) == ("one,two", "bus", "pw")
    assert config.proxy_mode is True and config.db_sslmode == "require"
    assert config.limit_time_real_cron == -1
    assert load(["--database", "x"]).db_name == "x"
    config = load(["--proxy-mode", "--no_proxy_mode"])
    assert (config.proxy_mode, config.source("proxy_mode")) == (
        False, "command line --no_proxy_mode")


def test_file_only_settings_have_no_flag():
    assert "unrecognized arguments" in config_error(["--mailbox-max-bytes", "1M"])
    assert load([], {"RTBUS_MAILBOX_MAX_BYTES": "1M"}).mailbox_max_bytes == MIB


def test_help_lists_every_flag_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        load(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    listed = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", out))
    assert set(cfg.cli_flags()) <= listed
    assert {"-c", "--config", "--help", "--version"} <= listed
    assert "--db_maxconn" not in out                       # underscore spellings are hidden
    for section in ("Processes", "Limits", "Database", "Bus", "Logging"):
        assert f"\n{section}:\n" in out


def test_version_exits_zero(capsys):
    with pytest.raises(SystemExit) as info:
        load(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("rtbus-server ")


def test_build_parser_uses_prog_and_commands():
    text = build_parser(("serve", "initdb"), prog="rtbus-test").format_help()
    assert text.startswith("usage: rtbus-test ") and "serve, initdb" in text


# --- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("4096", 4096), ("4k", 4096), ("4 KiB", 4096), ("2M", 2 * MIB),
    ("2mib", 2 * MIB), ("1G", 1024 * MIB), ("1.5g", 1536 * MIB), ("2560MiB", 2560 * MIB),
])
def test_parse_size(text, size):
    assert cfg.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "1.5", "1T", "M", "1 kB", "1e6"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        cfg.parse_size(text)


@pytest.mark.parametrize("size, text", [
    (0, "0"), (1000, "1000"), (4096, "4K"), (2560 * MIB, "2560M"), (2048 * MIB, "2G")])
def test_format_size(size, text):
    assert cfg.format_size(size) == text
    assert cfg.parse_size(text) == size


def test_list_type():
    setting = cfg.Setting("tags", "list", None, "Tags.", section="Test", cli=False)
    assert setting.parse(" a, b ,c") == ("a", "b", "c")
    assert setting.format(("a", "b")) == "a,b"
    with pytest.raises(ValueError):
        setting.parse("a,,b")


def test_effective_fallbacks():
    config = Config.defaults()
    assert config.effective("db_maxconn_gevent") == 64
    assert config.effective("limit_memory_soft_gevent") == 2048 * MIB
    assert config.effective("limit_memory_hard_gevent") == 2560 * MIB
    assert config.effective("limit_time_real_cron") == 120
    assert config.effective("websocket_close_batch") == 64      # the gevent pool size
    assert config.effective("db_name") == "rtbus"
    assert config.effective("workers") == 0
    config = config.replace(db_maxconn=10, limit_time_real=30, limit_memory_soft="1G")
    assert config.effective("db_maxconn_gevent") == 10
    assert config.effective("websocket_close_batch") == 10     # chained fallbacks
    assert config.effective("limit_time_real_cron") == 30
    assert config.effective("limit_memory_soft_gevent") == 1024 * MIB
    config = config.replace(db_maxconn_gevent=200, limit_time_real_cron=0, db_name="x")
    assert config.effective("db_maxconn_gevent") == 200
    assert config.effective("limit_time_real_cron") == 0
    assert config.effective("db_name") == "x"


# --- Config methods -------------------------------------------------------------------------


def test_replace_validates_and_records_runtime():
    config = Config.defaults()
    changed = config.replace(db_host="/tmp/pg", db_port=5433, workers="4", proxy_mode=True,
                             graceful_timeout=5, log_level="WARN")
    assert (changed.db_host, changed.db_port, changed.workers) == ("/tmp/pg", 5433, 4)
    assert (changed.graceful_timeout, changed.log_level) == (5.0, "warning")
    assert changed.source("db_port") == "runtime" and changed.source("http_port") == "default"
    assert config.db_host is None and config.source("db_port") == "default"

    with pytest.raises(ConfigError, match="for db_port from runtime: expected an integer"):
        config.replace(db_port=70000)
    with pytest.raises(ConfigError, match="for workers"):
        config.replace(workers=None)
    with pytest.raises(ConfigError, match="for workers"):
        config.replace(workers=True)
    with pytest.raises(ConfigError, match="for proxy_mode"):
        config.replace(proxy_mode=1)
    with pytest.raises(ConfigError, match="for limit_memory_soft"):
        config.replace(limit_memory_soft=-1)
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        config.replace(nope=1)
    with pytest.raises(ConfigError, match="longpolling_port is an alias of gevent_port"):
        config.replace(longpolling_port=1)


def test_json_round_trip(conf):
    path = conf("workers = 2\nfoo = bar\nlongpolling_port = 9000\n")
    config = load(["-c", path, "-w", "pw", "--limit-memory-soft", "1G"],
                  {"PGHOST": "db"}).replace(graceful_timeout=3)
    copy = Config.from_json(config.to_json())
    assert copy == config
    assert copy.notes == config.notes and len(copy.notes) == 3
    assert "db_password was given on the command line" in copy.notes[-1]
    assert copy.config_file == path
    assert [copy.source(s.name) for s in SETTINGS] == [config.source(s.name) for s in SETTINGS]
    assert copy.db_password == "pw" and copy.limit_memory_soft == 1024 * MIB


def test_from_json_rejects_garbage():
    with pytest.raises(ConfigError, match="cannot decode"):
        Config.from_json(b"not json")
    with pytest.raises(ConfigError, match="cannot decode"):
        Config.from_json(b'{"format": "other"}')
    with pytest.raises(ConfigError, match="cannot decode"):
        Config.from_json(b'[1, 2]')
    with pytest.raises(ConfigError, match="cannot decode"):
        Config.from_json(b'{"format": "rtbus.config/1", "values": 3, "sources": {},'
                         b' "notes": [], "config_file": null}')
    data = Config.defaults().to_json().replace(b'"workers": 0', b'"workers": -3')
    with pytest.raises(ConfigError, match="for workers from serialized configuration"):
        Config.from_json(data)


def test_dump_masks_secrets():
    config = load(["-w", "s3cret", "--bus-api-key", "k3y", "--workers", "2"])
    dump = config.dump()
    assert "s3cret" not in dump and "k3y" not in dump and "s3cret" not in repr(config)
    lines = dict(line.split(" = ", 1) for line in dump.splitlines())
    assert [key.strip() for key in lines] == [s.name for s in SETTINGS]
    assert re.fullmatch(r"\*\*\* +# command line -w", lines["db_password"])
    assert re.fullmatch(r"2 +# command line --workers", lines["workers"])
    assert re.fullmatch(r"\*\*\* +# command line --bus-api-key", lines["bus_api_key"])
    assert re.fullmatch(r"None +# default", Config.defaults().dump().splitlines()[
        [s.name for s in SETTINGS].index("db_password")].split(" = ", 1)[1])
    assert re.fullmatch(r"2G +# default", lines["limit_memory_soft"])


# --- generated documents --------------------------------------------------------------------


def test_docs_are_up_to_date():
    on_disk = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert on_disk == render_markdown(), (
        "docs/configuration.md is stale; regenerate it with: " + render.REGENERATE_DOCS)


def test_docs_cover_every_setting_and_env_name():
    text = render_markdown()
    for setting in SETTINGS:
        assert f"### `{setting.name}`" in text
        for env_name in setting.env_names:
            assert f"`{env_name}`" in text


def test_sample_conf_is_up_to_date():
    on_disk = (REPO / "conf" / "rtbus.conf").read_text(encoding="utf-8")
    assert on_disk == render_sample_conf(), (
        "conf/rtbus.conf is stale; regenerate it with: " + render.REGENERATE_SAMPLE)


def test_sample_conf_lists_every_key_at_its_default(tmp_path):
    sample = (REPO / "conf" / "rtbus.conf").read_text(encoding="utf-8")
    assert load(["-c", str(REPO / "conf" / "rtbus.conf")]).notes == ()
    uncommented = re.sub(r"(?m)^;(?=\w+ = )", "", sample)
    keys = re.findall(r"(?m)^(\w+) = ", uncommented)
    assert keys == [s.name for s in SETTINGS]
    path = tmp_path / "uncommented.conf"
    path.write_text(uncommented, encoding="utf-8")
    config = load(["-c", str(path)])
    assert config.notes == ()
    assert all(config.get(s.name) == s.default for s in SETTINGS)


def test_main_prints_documents(capsys):
    assert render.main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown()
    assert render.main(["--sample-conf"]) == 0
    assert capsys.readouterr().out == render_sample_conf()


def test_gevent_workers_takes_a_count_or_auto():
    assert load(["--gevent-workers", "3"]).gevent_workers == "3"
    assert load(["--gevent-workers", "auto"]).gevent_workers == "auto"
    assert load([]).gevent_workers == "1"
    for bad in ("0", "two", "-1"):
        assert "expected a string that is a whole number >= 1 or auto" in config_error(
            ["--gevent-workers", bad])
