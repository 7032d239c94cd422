"""Allow ``python -m wincrash``."""

from wincrash.cli import main

main()
