"""Suite-wide pytest configuration.

The ESX lab fixture (``esx_lab``) comes from :mod:`vmkeep.lab.pytest_plugin` so that every test
folder can use it.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

pytest_plugins = ["vmkeep.lab.pytest_plugin"]
