"""The backup deployments' defaults in vmkeep/deployments/prefect.yaml, as a Veeam administrator
expects a new job's: deleted NTFS blocks left out (BitLooker, on in Veeam), swap read (off in
Veeam's defaults too), CBT on, and every job's disk exclusions taken from one variable."""

from __future__ import annotations

import yaml

from vmkeep.deployments import pools


def _backup_deployments() -> dict[str, dict[str, object]]:
    doc = yaml.safe_load(pools.PREFECT_FILE.read_text())
    return {d["name"]: d["parameters"]["spec"] for d in doc["deployments"]
            if d["entrypoint"].startswith("vmkeep.flows.backup_vm")}


def test_backup_deployments_leave_deleted_blocks_out_and_read_swap() -> None:
    specs = _backup_deployments()
    assert {"nightly-lan", "nightly-san", "nightly-staging", "on-demand-lan"} <= set(specs)
    for name, spec in specs.items():
        assert spec["exclude_deleted"] is True, name
        assert spec["exclude_swap"] is False and spec["enable_cbt"] is True, name


def test_nightly_runs_take_disk_exclusions_from_their_variable() -> None:
    for name, spec in _backup_deployments().items():
        if name.startswith("nightly-"):
            assert spec["exclude_disks"] == "{{ prefect.variables.vmkeep_exclude_disks }}", name
    assert pools.VARIABLE_DEFAULTS["vmkeep_exclude_disks"] == []
    assert "vmkeep_exclude_disks" in pools.OPTIONAL_VARIABLES


def test_weekly_verifies_take_their_yara_rules_from_a_variable() -> None:
    """No rules by default (no scan); set ``vmkeep_yara_rules`` and every weekly verify scans
    each VM's newest point with them."""
    from vmkeep.jobs.maintenance_specs import VerifySpec

    doc = yaml.safe_load(pools.PREFECT_FILE.read_text())
    weekly = {d["name"]: d["parameters"]["spec"] for d in doc["deployments"]
              if d["entrypoint"] == "vmkeep.flows.verify:verify"}
    assert {"weekly-lan", "weekly-san"} <= set(weekly)
    for name, spec in weekly.items():
        assert spec["yara_rules"] == "{{ prefect.variables.vmkeep_yara_rules }}", name
    assert pools.VARIABLE_DEFAULTS["vmkeep_yara_rules"] == []
    assert "vmkeep_yara_rules" in pools.OPTIONAL_VARIABLES
    assert VerifySpec(repo="/r", yara_rules=None).yara_rules == []
