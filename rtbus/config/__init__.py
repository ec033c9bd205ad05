"""rtbus configuration: the settings table, and the one frozen `Config` built from it.

Every setting rtbus-server understands is declared once, in `table.SETTINGS`; the
command line (`command_line`), the configuration file and the environment (`loader`),
docs/configuration.md and conf/rtbus.conf (tools/render_config.py) are derived from it.

`load_config(argv, environ)` merges, from weakest to strongest: defaults, the
`[options]` section of the configuration file, the environment, the command line. It
returns an `Invocation` (the `Config`, the command and its arguments) or raises
`ConfigError` with one line an operator can act on.

    values.py        what a setting is: `Setting`, checks, parsing and formatting values
    table.py         the table itself, and the lookups derived from it
    loader.py        `Config`, `Invocation`, `load_config`
    command_line.py  the argparse front
"""

from rtbus.config.command_line import build_parser, cli_flags
from rtbus.config.loader import Config, Invocation, load_config
from rtbus.config.table import BY_FILE_KEY, BY_NAME, CONFIG_ENV, SECTIONS, SETTINGS
from rtbus.config.values import GIB, KIB, MIB, Setting, format_size, parse_size

__all__ = [
    "BY_FILE_KEY", "BY_NAME", "CONFIG_ENV", "GIB", "KIB", "MIB", "SECTIONS", "SETTINGS",
    "Config", "Invocation", "Setting", "build_parser", "cli_flags", "format_size",
    "load_config", "parse_size",
]
