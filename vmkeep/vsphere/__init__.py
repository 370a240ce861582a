"""vmkeep.vsphere — plain-Python access to vSphere over pyVmomi (no Prefect here).

Modules, one job each (contracts in each module's docstring):

=================  ==========================================================================
``errors``         typed errors (exit code 16), ``translate`` for pyVmomi faults, ``from None``
``target``         ``VCenterTarget``: the one vCenter target (URL, user, password source, TLS
                   choice; never a password) of the CLI, the specs and the tasks; stdlib only
``credentials``    ``Credentials`` (password hidden everywhere), env / password-file loaders
``tls``            ``TLSOptions``: CA file (default: system store), SHA-256 pin, or insecure;
                   localhost is verified like any host
``connection``     ``connect()`` → ``Session``: re-login once on NotAuthenticated, drop retries
                   only for idempotent calls, keep-alive, property reads via the collector
``waiter``         ``wait_for_task`` polling ``info.state``/``error``/``result`` with timeout
``inventory``      ``list_vms`` in one paged RetrievePropertiesEx, ``find_vm`` by instanceUuid,
                   ``select_vms`` (names, globs, folder, host, cluster, tagged morefs)
``tagging``        vSphere tags through the vAPI REST tagging service: VMs by CATEGORY:TAG
``privileges``     the role vmkeep needs (one list), the session's missing privileges
``doctor``         ``vmkeep doctor``: privileges, hosts, datastores/transports, VMs
``snapshots``      ``backup_snapshot`` context manager (``vmkeep-<run>`` + marker, always
                   removed), ``QuiesceFailed``, ``sweep_snapshots``
``cbt``            ``enable_cbt``, ``snapshot_disks``, ``query_changed_areas``, ``cbt_plan`` /
                   ``plan_disk``: the one typed ``ReadPlan`` per disk, never a silent
                   incremental
``vmdk``           datastore paths, safe text-descriptor parsing (no ``..``/absolute extents)
``hosts``          ESXi hosts as HTTPS endpoints (address, port, own certificate), per-host cap
``httpclient``     datastore ``/folder`` and guest-transfer HTTPS (session or host TLS, tickets,
                   503 Retry-After, Range-ignored refusal, lock-owner 500s typed)
``transports``     ``open_disk``: ``https`` Range reads from the VM's host (service tickets,
                   vCenter fallback with a warning) or ``direct`` (mounted datastore)
``hotadd``         ``hotadd`` transport: attach snapshot disks to the mover VM read-only
                   (marked), read its devices, detach; ``hotadd_possible``, ``sweep_hotadd``
``guestops``       run programs/scripts in the guest, upload/download guest files
``vmconfig``       ``capture_config`` (JSON, v2 with NVRAM), ``build_spec``, ``create_vm``,
                   ``upload_disk``, ``upload_nvram``, ``check_transport``
``vmsettings``     firmware/secure boot, vTPM presence, extraConfig, allocations; identity keys
``nfc_import``     ``import_vm`` → ``ImportLease`` (ImportVApp, progress keeper, upload, abort)
``disk_stream``    a backed-up disk as a streamOptimized VMDK stream (zero grains skipped)
``disk_attach``    ``restore disk``: helper VM, move beside the target, attach
``restore_marker`` the half-restored mark (extraConfig) and ``sweep_half_restored``
=================  ==========================================================================

Who may delete what: only :mod:`.snapshots` removes snapshots, and only vmkeep's (name prefix
*and* description marker); only :mod:`.hotadd` detaches disks from a mover VM, and only those
it marked; :func:`.vmconfig.create_vm` never replaces an existing VM; :mod:`.replace` destroys
an existing VM only after the restore that replaces it completed (``restore vm --overwrite``:
until then it is set aside, and put back if the restore fails; its sweep only renames back);
:mod:`.restore_marker` destroys only VMs carrying vmkeep's half-restored mark of a dead run;
:mod:`.disk_attach` deletes only a disk it just moved and could not attach.
"""
