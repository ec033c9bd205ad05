"""The argparse front derived from the settings table: flags, switches, help texts."""

from __future__ import annotations

import argparse
import importlib.metadata
from typing import Any

from rtbus.errors import ConfigError
from rtbus.config.table import CONFIG_ENV, SECTIONS, SETTINGS
from rtbus.config.values import METAVARS, Given, Setting


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigError, without usage or SystemExit."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


class _Record(argparse.Action):
    """Remember each use of a setting's flag, in order and with its spelling.

    Values are parsed later, by the setting itself, so that command-line errors
    read like file and environment ones and the alias check can see names.
    """

    def __init__(self, option_strings, dest, *, setting: Setting, key: str, const=None,
                 **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS,
                         const=const, nargs=0 if const is not None else None, **kwargs)
        self.setting, self.key = setting, key

    def __call__(self, parser, namespace, values, option_string=None):
        raw = self.const if self.const is not None else values
        given = Given(self.setting, self.key, raw, f"command line {option_string}",
                       f"{option_string} on the command line")
        namespace._rtbus_given = [*getattr(namespace, "_rtbus_given", []), given]


def build_parser(commands: tuple[str, ...] = ("serve",),
                 prog: str = "rtbus-server") -> argparse.ArgumentParser:
    """The argparse parser for `prog`; --help groups the options by section."""
    parser = _Parser(prog=prog, allow_abbrev=False, add_help=False,
                     usage="%(prog)s [OPTION ...] [COMMAND [ARG ...]]",
                     description="A real-time bus server speaking Odoo's bus protocol.",
                     epilog=("Every option can also be set in the [options] section of the "
                             "configuration file or as an RTBUS_<KEY> environment variable; "
                             "see docs/configuration.md."))
    general = parser.add_argument_group("General")
    general.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    general.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                         help="Show the version and exit.")
    general.add_argument("-c", "--config", metavar="PATH", help=(
        f"Configuration file to read (section [options]); also ${CONFIG_ENV}."))
    general.add_argument("command", nargs="*", metavar="COMMAND", help=(
        f"Command to run, one of: {', '.join(commands)}; the default is the first, and "
        f"any further arguments are the command's."))
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for setting in SETTINGS:
            if setting.section == section and setting.cli:
                _addsetting_named(group, setting)
    return parser


def _addsetting_named(group: argparse._ArgumentGroup, setting: Setting) -> None:
    help_text = f"{setting.help} [default: {_help_default(setting)}]".replace("%", "%%")
    spellings = [(setting.name, setting.flags, help_text)] + [
        (alias, (_long_flag(alias),), f"Alias of --{setting.name.replace('_', '-')}.")
        for alias in setting.aliases]
    for key, flags, text in spellings:
        if setting.type == "bool":
            _add_switches(group, setting, key, flags, text)
        else:
            metavar = setting.metavar or METAVARS.get(setting.type)
            if setting.type == "choice":
                metavar = "{" + ",".join(setting.choices) + "}"
            _add_flags(group, setting, key, flags, text, metavar=metavar)


def _add_switches(group, setting: Setting, key: str, flags: tuple[str, ...], text: str) -> None:
    negated = tuple(f"--no-{flag[2:]}" for flag in flags if flag.startswith("--"))
    _add_flags(group, setting, key, flags, text, const=True)
    _add_flags(group, setting, key, negated, f"Turn off {flags[-1]}.", const=False)


def _add_flags(group, setting: Setting, key: str, flags: tuple[str, ...], text: str,
               **kwargs: Any) -> None:
    group.add_argument(*flags, action=_Record, setting=setting, key=key, help=text, **kwargs)
    hidden = tuple(flag.replace("-", "_").replace("__", "--", 1) for flag in flags
                   if flag.startswith("--") and "-" in flag[2:])
    if hidden:
        group.add_argument(*hidden, action=_Record, setting=setting, key=key,
                           help=argparse.SUPPRESS, **kwargs)


def _long_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _help_default(setting: Setting) -> str:
    if setting.default is None:
        return "unset"
    return setting.format(setting.default)


def _version() -> str:
    try:
        return importlib.metadata.version("rtbus")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def cli_flags() -> tuple[str, ...]:
    """Every option string --help shows for the settings."""
    return tuple(flag for setting in SETTINGS for flag in visible_flags(setting))


def visible_flags(setting: Setting) -> tuple[str, ...]:
    """The setting's flags, its aliases' flags, and the --no- forms of booleans."""
    if not setting.cli:
        return ()
    own = setting.flags + tuple(_long_flag(alias) for alias in setting.aliases)
    if setting.type != "bool":
        return own
    return own + tuple(f"--no-{flag[2:]}" for flag in own if flag.startswith("--"))


