"""What a setting is: its record (`Setting`), the checks its values meet, and how values
are parsed from text and formatted back (sizes, booleans, lists)."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Protocol


KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


class Check(Protocol):
    def accepts(self, value: Any) -> bool: ...
    def describe(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed numeric interval; either end may be open-ended (None)."""

    low: float | None = None
    high: float | None = None

    def accepts(self, value: Any) -> bool:
        return ((self.low is None or value >= self.low)
                and (self.high is None or value <= self.high))

    def describe(self) -> str:
        if self.high is None:
            return f">= {self.low}"
        if self.low is None:
            return f"<= {self.high}"
        return f"between {self.low} and {self.high}"


@dataclasses.dataclass(frozen=True)
class SqlIdentifier:
    """An unquoted SQL identifier, optionally qualified by a schema (`schema.name`)."""

    _PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")

    def accepts(self, value: Any) -> bool:
        return self._PATTERN.fullmatch(value) is not None

    def describe(self) -> str:
        return "that is an SQL identifier, optionally schema-qualified (schema.name)"


@dataclasses.dataclass(frozen=True)
class CountOrAuto:
    """A whole number of at least `low`, or the word ``auto``."""

    low: int = 1

    def accepts(self, value: Any) -> bool:
        text = str(value).strip().lower()
        return text == "auto" or (text.isdigit() and int(text) >= self.low)

    def describe(self) -> str:
        return f"that is a whole number >= {self.low} or auto"


PORT = Range(0, 65535)
COUNT = Range(0)
TIMEOUT = Range(0)


@dataclasses.dataclass(frozen=True)
class Fallback:
    """What `Config.effective()` uses when a setting holds the value `when`:
    the effective value of another `setting`, or else the constant `value`."""

    when: Any = None
    setting: str | None = None
    value: Any = None

    def describe(self) -> str:
        trigger = "unset" if self.when is None else f"{_format_plain(self.when)}"
        target = f"`{self.setting}`" if self.setting else f"`{_format_plain(self.value)}`"
        return f"{trigger} means {target}"


# ---------------------------------------------------------------------------
# The Setting record: one row of the table, and how its values are parsed.
# ---------------------------------------------------------------------------

TYPES = ("int", "float", "bool", "str", "path", "bytes", "choice", "list")
_TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
_FALSE_WORDS = frozenset({"0", "no", "false", "off"})
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(k|kib|m|mib|g|gib)?", re.IGNORECASE)
_SIZE_UNITS = {"k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}
_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "path": "a file path",
    "bool": "a boolean (true/false, yes/no, on/off, 1/0)",
    "bytes": "a size in bytes, or a number with a K, M or G suffix (powers of 1024)",
    "list": "a comma-separated list",
}
METAVARS = {"int": "N", "float": "SECONDS", "str": "VALUE", "path": "PATH",
             "bytes": "SIZE", "list": "A,B,..."}


class _Unset:
    """Marker for an Odoo-style 'no value here' (`None`, empty, `False` on a non-bool)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its file key, type, default, help sentence and spellings.

    `flags` are the command-line option strings (each long flag is also accepted,
    hidden from --help, with underscores instead of dashes); `aliases` are other
    names for the same setting, valid as file keys, as `--alias-flags` and as
    `RTBUS_<ALIAS>`; `env` lists environment names besides `RTBUS_<NAME>`.
    """

    name: str
    type: str
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    choice_aliases: tuple[tuple[str, str], ...] = ()
    secret: bool = False
    section: str = ""
    cli: bool = True
    check: Check | None = None
    fallback: Fallback | None = None
    metavar: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"setting {self.name}: unknown type {self.type!r}")
        if (self.type == "choice") != bool(self.choices):
            raise ValueError(f"setting {self.name}: choices go with type 'choice' only")
        if self.cli != bool(self.flags):
            raise ValueError(f"setting {self.name}: flags go with cli=True and vice versa")

    @property
    def file_keys(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def env_names(self) -> tuple[str, ...]:
        return tuple(f"RTBUS_{key.upper()}" for key in self.file_keys) + self.env

    @property
    def optional(self) -> bool:
        """Whether the setting may hold None ("unset")."""
        return self.default is None

    def expected(self) -> str:
        """What a valid value looks like, as the end of "expected ..."."""
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        words = _TYPE_WORDS[self.type]
        return f"{words} {self.check.describe()}" if self.check else words

    def parse(self, raw: str | bool) -> Any:
        """Turn a raw file/env/CLI value into a checked value, or UNSET.

        Raises ValueError (without a message: the caller knows the context).
        """
        if isinstance(raw, bool):          # a CLI switch such as --no-proxy-mode
            return raw
        text = raw.strip()
        if text == "" or text.lower() == "none":
            return UNSET
        value = getattr(self, f"_parse_{self.type}")(text)
        self._check(value)
        return value

    def coerce(self, value: Any) -> Any:
        """Validate a Python value (from `Config.replace` or JSON).

        Strings are parsed as in a file, except for string settings, taken as
        they are; None is accepted by settings whose default is None.
        Raises ValueError.
        """
        if value is None and self.optional:
            return None
        if isinstance(value, str) and self.type != "str":
            parsed = self.parse(value)
            return self.default if parsed is UNSET else parsed
        value = self._coerce_typed(value)
        self._check(value)
        return value

    def format(self, value: Any) -> str:
        """The value as it would be written in the configuration file."""
        if value is None:
            return "None"
        if self.type == "bytes":
            return format_size(value)
        if self.type == "list":
            return ",".join(value)
        return _format_plain(value)

    def display(self, value: Any) -> str:
        """`format(value)`, or *** for a secret that is set: safe to log."""
        return "***" if self.secret and value is not None else self.format(value)

    def _check(self, value: Any) -> None:
        if self.check is not None and not self.check.accepts(value):
            raise ValueError()

    def _coerce_typed(self, value: Any) -> Any:
        if self.type == "int" and type(value) is int:
            return value
        if self.type == "bytes" and type(value) is int and value >= 0:
            return value
        if self.type == "float" and type(value) in (int, float) and math.isfinite(value):
            return float(value)
        if self.type == "bool" and type(value) is bool:
            return value
        if self.type == "str" and isinstance(value, str):
            return value
        if self.type == "list" and isinstance(value, (list, tuple)):
            if all(isinstance(item, str) for item in value):
                return tuple(value)
        raise ValueError()

    @staticmethod
    def _parse_int(text: str) -> int:
        return int(text, 10)

    @staticmethod
    def _parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError()
        return value

    @staticmethod
    def _parse_bool(text: str) -> bool:
        word = text.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueError()

    @staticmethod
    def _parse_str(text: str) -> str:
        return text

    @staticmethod
    def _parse_path(text: str) -> str:
        # Absolute from the start, so a later chdir() cannot change what it points to.
        return os.path.abspath(os.path.expanduser(text))

    @staticmethod
    def _parse_bytes(text: str) -> int:
        return parse_size(text)

    @staticmethod
    def _parse_list(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(","))
        if not all(items):
            raise ValueError()
        return items

    def _parse_choice(self, text: str) -> str:
        word = dict(self.choice_aliases).get(text.lower(), text.lower())
        if word not in self.choices:
            raise ValueError()
        return word


def parse_size(text: str) -> int:
    """Parse "4194304", "4M", "4 MiB", "1.5g"... into a number of bytes.

    A bare number must be an integer; suffixes are powers of 1024 and
    case-insensitive. Raises ValueError for anything else.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    if unit is None:
        return int(number)
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def format_size(value: int) -> str:
    """Write a number of bytes with the largest suffix that divides it exactly."""
    for suffix, unit in (("G", GIB), ("M", MIB), ("K", KIB)):
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def _format_plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def in_section(title: str, *settings: Setting) -> tuple[Setting, ...]:
    return tuple(dataclasses.replace(setting, section=title) for setting in settings)


@dataclasses.dataclass(frozen=True)
class Given:
    """One raw value for a setting, as found in one source."""

    setting: Setting
    key: str        # the name used: the setting's name or one of its aliases
    raw: str | bool
    source: str     # for Config.source(): "file /etc/rtbus.conf", "env PGHOST", ...
    label: str      # for messages: "longpolling_port in /etc/rtbus.conf", ...
    rank: int = 0   # within one source, the lowest rank present wins (RTBUS_X over PGX)
