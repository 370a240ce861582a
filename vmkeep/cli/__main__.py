"""``python -m vmkeep.cli``."""

from vmkeep.cli.main import main

main()
