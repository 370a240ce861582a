"""The fault kinds the ESX lab can switch on (``vmkeep lab fault``, ``LabClient.fault``)."""

FAULT_KINDS = (
    "snapshot_create",
    "quiesce_fail",
    "quiesce_timeout",
    "remove_snapshot",
    "soap_fault",
    "ds_slow",
    "ds_short",
    "ds_drop",
    "guest_program",
    "guest_auth",
    "session_expire",
    "host_disconnect",
    "cbt_lie",
    "ds_norange",
    "host_unreachable",
)
