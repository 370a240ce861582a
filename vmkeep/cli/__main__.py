"""``python -m vmkeep.cli``: the console script."""

from vmkeep.cli.main import console_main

console_main()
