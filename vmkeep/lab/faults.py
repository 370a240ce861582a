"""The fault kinds the ESX lab can switch on (``vmkeep lab fault``, ``LabClient.fault``)."""

FAULT_KINDS = (
    "snapshot_create",
    "quiesce_fail",
    "quiesce_timeout",
    "remove_snapshot",
    "remove_slow",  # RemoveSnapshot takes ``delay`` s (a large consolidation); meanwhile the
    # VM's other snapshot operations fail with TaskInProgress (snapshots.go)
    "soap_fault",
    "ds_slow",
    "ds_short",
    "ds_drop",
    "guest_program",
    "guest_auth",
    "session_expire",
    "host_disconnect",
    "cbt_lie",
    "nfc_abort",  # NFC export stream: the lease is cancelled after ``bytes`` (nfc_export.go)
    "nfc_timeout",  # NFC export stream: the lease times out after ``bytes``
    "nfc_keys",  # NFC export lease: device keys in an unknown form (disks paired in order)
    "nfc_corrupt",  # NFC export stream: a damaged grain marker (a hostile stream)
    "ds_norange",
    "host_unreachable",
    "ds_full",  # target = a datastore's name: its summary reports ``bytes`` free while the rule
    # stands (``count=0``); a snapshot needing < 64 MiB there fails with NoDiskSpace (dsspace.go)
    "ds_latency",  # target = a datastore's name: its hosts' datastore.total{Read,Write}Latency
    # counters report ``bytes`` milliseconds while the rule stands (``count=0``; perf.go)
    "free_licence",  # a free ESXi licence: write methods (snapshots, reconfigure, power, VM
    # creation, disk management) fail with RestrictedVersion until cleared (server.go)
)
