"""The `fleet` command line: click commands, the only layer that prints, prompts or exits.

`fleet.cli.main:main` is the console script; each command group lives in its own module, listed in
fleet.cli.main.COMMANDS and imported only when that command runs.
"""
