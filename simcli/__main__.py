"""`python -m simcli` runs the CLI."""

from simcli.cli import main

main()
