"""`Config`, the frozen result, and `load_config`: defaults < the `[options]` section of
the configuration file < the environment < the command line, merged once at start-up.

Nothing here reads configuration at import time."""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from rtbus.errors import ConfigError
from rtbus.config.command_line import build_parser
from rtbus.config.table import BY_FILE_KEY, BY_NAME, CONFIG_ENV, SETTINGS, setting_named
from rtbus.config.values import UNSET, Given, Setting

_JSON_FORMAT = "rtbus.config/1"


class Config:
    """Every setting's value and where it came from; immutable.

    Read values as attributes (`config.workers`) or with `get(name)`;
    `effective(name)` applies fallbacks (e.g. db_maxconn_gevent unset ->
    db_maxconn). `notes` are warnings and information gathered while loading,
    to log once logging is configured.
    """

    __slots__ = ("_values", "_sources", "notes", "config_file")

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str],
                 notes: Iterable[str] = (), config_file: str | None = None) -> None:
        missing = set(BY_NAME) - set(values)
        if missing:
            raise ConfigError(f"missing settings: {', '.join(sorted(missing))}")
        set_ = object.__setattr__
        set_(self, "_values", MappingProxyType({s.name: values[s.name] for s in SETTINGS}))
        set_(self, "_sources", MappingProxyType(
            {s.name: sources.get(s.name, "default") for s in SETTINGS}))
        set_(self, "notes", tuple(notes))
        set_(self, "config_file", config_file)

    @classmethod
    def defaults(cls) -> Config:
        """A Config holding every default, as if nothing were configured."""
        return cls({s.name: s.default for s in SETTINGS}, {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"Config has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is frozen; use Config.replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Config is frozen; use Config.replace()")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self._state() == other._state()

    def __hash__(self) -> int:
        return hash((tuple(self._values.items()), tuple(self._sources.items()), self.notes))

    def __reduce__(self):
        return (Config, (dict(self._values), dict(self._sources), self.notes, self.config_file))

    def __repr__(self) -> str:
        changed = ", ".join(f"{name}={self._shown(name)}" for name, source in
                            self._sources.items() if source != "default")
        return f"Config({changed})"

    def _state(self) -> tuple:
        return (dict(self._values), dict(self._sources), self.notes, self.config_file)

    def _shown(self, name: str) -> str:
        return BY_NAME[name].display(self._values[name])

    def get(self, name: str) -> Any:
        """The value of setting `name`; ConfigError if there is no such setting."""
        return self._values[setting_named(name).name]

    def source(self, name: str) -> str:
        """Where the value came from: "default", "file /path", "env RTBUS_X",
        "command line --x" or "runtime"."""
        return self._sources[setting_named(name).name]

    def effective(self, name: str) -> Any:
        """The value with the setting's fallback applied (see `Setting.fallback`)."""
        fallback = setting_named(name).fallback
        value = self._values[name]
        if fallback is None or value != fallback.when:
            return value
        return self.effective(fallback.setting) if fallback.setting else fallback.value

    def replace(self, **changes: Any) -> Config:
        """A new Config with `changes` validated and recorded as set at "runtime".

        Strings are parsed like file values; other values must have the
        setting's type. Raises ConfigError for unknown names or bad values.
        """
        values, sources = dict(self._values), dict(self._sources)
        for name, value in changes.items():
            setting = setting_named(name)
            values[name] = _coerce(setting, value, "runtime")
            sources[name] = "runtime"
        return Config(values, sources, self.notes, self.config_file)

    def to_json(self) -> bytes:
        """Serialize values (secrets included), sources and notes, for a child process."""
        return json.dumps({
            "format": _JSON_FORMAT,
            "values": dict(self._values),
            "sources": dict(self._sources),
            "notes": list(self.notes),
            "config_file": self.config_file,
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Config:
        """Rebuild a Config written by `to_json`; ConfigError if it is not one."""
        try:
            state = json.loads(data)
            if state.get("format") != _JSON_FORMAT:
                raise ValueError("not an rtbus configuration")
            values, sources = dict(state["values"]), dict(state["sources"])
            notes, config_file = tuple(state["notes"]), state["config_file"]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"cannot decode a serialized configuration: {exc}") from None
        checked = {s.name: s.default for s in SETTINGS}
        for name, value in values.items():
            checked[name] = _coerce(setting_named(name), value, "serialized configuration")
        return cls(checked, sources, notes, config_file)

    def dump(self) -> str:
        """One "key = value  # source" line per setting, secrets masked."""
        pairs = [(f"{name} = {self._shown(name)}", self._sources[name]) for name in self._values]
        width = max(len(left) for left, _ in pairs)
        return "\n".join(f"{left:<{width}}  # {source}" for left, source in pairs)


def _coerce(setting: Setting, value: Any, origin: str) -> Any:
    try:
        return setting.coerce(value)
    except ValueError:
        raise ConfigError(_invalid(setting, value, origin)) from None


def _invalid(setting: Setting, raw: Any, origin: str) -> str:
    shown = "***" if setting.secret else repr(raw)
    return f"invalid value {shown} for {setting.name} from {origin}: expected {setting.expected()}"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What the command line asks for: a configuration, a command and its arguments."""

    config: Config
    command: str
    args: tuple[str, ...]


# ---------------------------------------------------------------------------
# Loading: raw values from each source, then one merge.
# ---------------------------------------------------------------------------


def load_config(argv: list[str], environ: Mapping[str, str] | None = None, *,
                commands: tuple[str, ...] = ("serve",), default_command: str = "serve",
                prog: str = "rtbus-server") -> Invocation:
    """Build the Config from defaults < config file < environment < command line.

    `argv` excludes the program name; `environ` defaults to os.environ. The first
    positional argument, if any, must be one of `commands`; the rest are
    returned as its arguments. Raises ConfigError (one line) for any bad flag,
    value or file; --help and --version print and raise SystemExit(0).
    """
    environ = os.environ if environ is None else environ
    namespace = build_parser(commands, prog).parse_intermixed_args(argv)
    command, args = _split_command(namespace.command, commands, default_command)
    config_file = namespace.config or environ.get(CONFIG_ENV) or None
    if config_file:
        config_file = os.path.abspath(config_file)
    notes: list[str] = []
    layers = [
        _from_file(config_file, notes) if config_file else [],
        _from_environ(environ),
        getattr(namespace, "_rtbus_given", []),
    ]
    values, sources = _merge(layers, notes)
    _read_secret_files(values, sources)
    _warn_secrets_on_command_line(sources, notes)
    return Invocation(Config(values, sources, notes, config_file), command, tuple(args))


# Secret setting -> the setting naming a file that holds it.
_SECRET_FILES = (("bus_api_key", "bus_api_key_file"),)


def _read_secret_files(values: dict, sources: dict) -> None:
    """Replace each secret that has a file setting by the first line of that file."""
    for secret, file_setting in _SECRET_FILES:
        path = values[file_setting]
        if path is None:
            continue
        if values[secret] is not None:
            raise ConfigError(f"{secret} ({sources[secret]}) and {file_setting} "
                              f"({sources[file_setting]}) are both given; keep only one")
        try:
            with open(path, encoding="utf-8") as file:
                value = file.readline().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {file_setting} {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_setting} {path} is not valid UTF-8") from None
        if not value:
            raise ConfigError(f"{file_setting} {path} is empty: its first line must hold {secret}")
        values[secret] = value
        sources[secret] = f"file {path} ({file_setting})"


def _warn_secrets_on_command_line(sources: Mapping[str, str], notes: list[str]) -> None:
    for setting in SETTINGS:
        if setting.secret and sources[setting.name].startswith("command line"):
            better = dict(_SECRET_FILES).get(setting.name)
            instead = f"{better}, " if better else ""
            notes.append(f"{setting.name} was given on the command line, which every local user "
                         f"can read (ps) until the process retitles itself; use {instead}the "
                         f"configuration file or RTBUS_{setting.name.upper()} instead")


def _split_command(positionals: list[str], commands: tuple[str, ...],
                   default_command: str) -> tuple[str, list[str]]:
    if not positionals:
        return default_command, []
    if positionals[0] not in commands:
        raise ConfigError(f"unknown command {positionals[0]!r} "
                          f"(expected one of: {', '.join(commands)})")
    return positionals[0], positionals[1:]


def _from_file(path: str, notes: list[str]) -> list[Given]:
    parser = _read_ini(path)
    if not parser.has_section("options"):
        notes.append(f"configuration file {path} has no [options] section; nothing read from it")
        return []
    given = []
    for key, raw in parser.items("options"):
        setting = BY_FILE_KEY.get(key)
        if setting is None:
            notes.append(f"unknown option {key!r} in {path} (ignored)")
            continue
        # Odoo's old --save wrote "key = False" for every unset non-boolean option.
        if setting.type != "bool" and raw.strip() == "False":
            continue
        given.append(Given(setting, key, raw, f"file {path}", f"{key} in {path}"))
    return given


def _read_ini(path: str) -> configparser.RawConfigParser:
    # default_section="" because no "[...]" header can be empty: a [DEFAULT]
    # section then stays an ordinary, ignored section instead of leaking
    # its keys into [options].
    parser = configparser.RawConfigParser(default_section="")
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file, source=path)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not valid UTF-8") from None
    except configparser.Error as exc:
        raise ConfigError(f"malformed configuration file {path}: {_ini_problem(exc)}") from None
    return parser


def _ini_problem(exc: configparser.Error) -> str:
    # Our own wording: configparser's messages span lines and quote the
    # offending line, which may hold a password.
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: a setting before any [section] header"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno}: {exc.option!r} appears twice in [{exc.section}]"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: section [{exc.section}] appears twice"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        return f"cannot parse line {lines} (expected 'key = value')"
    return " ".join(str(exc).split())


def _from_environ(environ: Mapping[str, str]) -> list[Given]:
    given = []
    for setting in SETTINGS:
        for index, env_name in enumerate(setting.env_names):
            if env_name not in environ:
                continue
            is_rtbus = index < len(setting.file_keys)
            key = setting.file_keys[index] if is_rtbus else setting.name
            given.append(Given(setting, key, environ[env_name], f"env {env_name}",
                                f"{env_name} in the environment",
                                rank=0 if is_rtbus else index))
    return given


def _merge(layers: list[list[Given]], notes: list[str]) -> tuple[dict, dict]:
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}
    winners: dict[str, Given] = {}
    for level, layer in enumerate(layers):
        resets = level == len(layers) - 1   # "None" on the command line restores the default
        for setting in SETTINGS:
            chosen = _resolve(setting, [g for g in layer if g.setting is setting], resets)
            if chosen is not None:
                values[setting.name], winner = chosen
                sources[setting.name] = winner.source
                winners[setting.name] = winner
    for setting in SETTINGS:
        if setting.aliases and _alias_used(setting, layers):
            winner = winners.get(setting.name)
            by = f"set by {winner.label}" if winner else "the default"
            notes.append(f"{setting.name} = {setting.display(values[setting.name])} ({by}; "
                         f"{', '.join(setting.aliases)} is an alias of {setting.name})")
    return values, sources


def _alias_used(setting: Setting, layers: list[list[Given]]) -> bool:
    return any(g.setting is setting and g.key != setting.name for layer in layers for g in layer)


def _resolve(setting: Setting, given: list[Given], resets: bool) -> tuple[Any, Given] | None:
    """The value one source gives a setting, or None if it gives none.

    Within a source the last spelling of each name wins (repeated flags); two
    different names (the setting and an alias) must agree.
    """
    if not given:
        return None
    best_rank = min(g.rank for g in given)
    last_by_key = {g.key: g for g in given if g.rank == best_rank}
    parsed = []
    for g in last_by_key.values():
        value = _parse(g)
        if value is UNSET and not resets:
            continue
        parsed.append((setting.default if value is UNSET else value, g))
    if not parsed:
        return None
    for value, g in parsed[1:]:
        if value != parsed[0][0]:
            first = parsed[0][1]
            raise ConfigError(
                f"conflicting values for {setting.name}: {first.label} gives "
                f"{setting.display(parsed[0][0])} but {g.label} gives {setting.display(value)}; "
                f"they name the same setting, keep only one")
    return next((p for p in parsed if p[1].key == setting.name), parsed[0])


def _parse(given: Given) -> Any:
    try:
        return given.setting.parse(given.raw)
    except ValueError:
        raise ConfigError(_invalid(given.setting, given.raw, given.label)) from None


