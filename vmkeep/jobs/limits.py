"""The largest values a job's times may take — shared by the specs, which refuse larger ones,
and the CLI, which refuses them as usage errors naming the option.  Larger values are no
setting anyone means, and past them Python's clocks overflow (``timedelta(minutes=1e300)``,
``Event.wait(1e300)``: an ``OverflowError`` traceback mid-job).  Plain numbers: no imports, so
the CLI reads them without loading the specs."""

#: a checker's or a boot's timeout, in seconds: a week
MAX_TIMEOUT_S = 7 * 86400.0
#: how long to wait for a host's HTTPS endpoint (``doctor``), in seconds: an hour
MAX_HOST_TIMEOUT_S = 3600.0
#: the age of a leftover snapshot ``sweep`` may wait for, in minutes: 1000 years, as durations
MAX_LEFTOVER_AGE_MIN = 1000 * 525_960.0
#: the recovery point objective ``rpo`` checks, in hours: 1000 years
MAX_RPO_HOURS = 1000 * 8766.0
