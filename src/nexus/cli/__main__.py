"""`python -m nexus.cli` runs the `nexus` command."""

from nexus.cli.app import main

main()
