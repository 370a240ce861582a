"""Job specs: validated before a job runs; empty names and sources are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.flows.run import run_flow
from vmkeep.jobs import specs
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.target import TARGET_FIELDS, InvalidTarget, VCenterTarget


def test_flat_vcenter_keywords_fold_into_the_target() -> None:
    spec = specs.build(
        specs.BackupVmSpec,
        {"repo": "/r", "vm": "linux01", "vcenter": "vc:443", "user": "u", "insecure": True},
    )
    assert spec.vcenter.url == "vc:443" and spec.vcenter.user == "u" and spec.vcenter.insecure
    many = specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc", "patterns": ["a*"]})
    child = many.for_vm("uuid-1")
    assert child.vm == "uuid-1" and child.licence_checked and child.vcenter == many.vcenter


def test_the_vcenter_field_is_the_one_target_and_keeps_its_checks_and_schema() -> None:
    """The spec's ``vcenter`` is :class:`VCenterTarget`, the plain dataclass the CLI builds and
    the tasks connect with: pydantic validates it (an instance again too), a spec dumped as
    Prefect parameters comes back equal, and the deployment form keeps its constraints."""
    target = VCenterTarget("vc:443", user="u", password_file="/etc/vmkeep/pw", thumbprint="ab")
    spec = specs.build(specs.SweepSpec, {"vcenter": target})
    assert type(spec.vcenter) is VCenterTarget and spec.vcenter == target
    dumped = spec.model_dump(mode="json")
    assert dumped["vcenter"] == {
        "url": "vc:443", "user": "u", "password_file": "/etc/vmkeep/pw", "password_block": None,
        "cafile": None, "thumbprint": "ab", "insecure": False,
    }
    assert specs.build(specs.SweepSpec, dumped) == spec
    for bad, named in (
        (VCenterTarget(""), "vcenter.url"),  # the CLI's "no --vcenter" is no spec's target
        ({"url": "vc", "password": "x"}, "vcenter.password"),  # never a password field
        ({"url": "vc", "insecure": True, "thumbprint": "ab"}, "insecure cannot be combined"),
    ):
        with pytest.raises(specs.InvalidSpec) as info:
            specs.build(specs.SweepSpec, {"vcenter": bad})
        assert named in info.value.get_message()
    with pytest.raises(InvalidTarget) as refused:  # the same rule outside pydantic: a usage error
        VCenterTarget("vc", insecure=True, cafile="/ca.pem")
    assert refused.value.exit_code == 2
    schema = specs.SweepSpec.model_json_schema()["$defs"]["VCenterTarget"]
    assert schema["additionalProperties"] is False and schema["required"] == ["url"]
    assert schema["properties"]["url"]["minLength"] == 1
    assert list(schema["properties"]) == list(TARGET_FIELDS)
    assert all(field.get("description") for field in schema["properties"].values())


@pytest.mark.parametrize(
    ("spec_type", "params", "field"),
    [
        (specs.BackupVmSpec, {"repo": "/r", "vm": "", "vcenter": "vc"}, "vm"),
        (specs.BackupFilesSpec, {"repo": "/r", "source": "", "name": "n"}, "source"),
        (specs.BackupFilesSpec, {"repo": "/r", "source": "/s", "name": ""}, "name"),
        (specs.BackupImageSpec, {"repo": "", "path": "/p", "name": "n"}, "repo"),
        (specs.BackupVmSpec, {"repo": "/r", "vm": "x", "vcenter": "vc", "insecure": True,
                              "cafile": "/ca"}, "insecure"),
        (specs.BackupVmSpec, {"repo": "/r", "vm": "x", "vcenter": "vc", "transport": "direct"},
         "datastore_mounts"),
    ],
)
def test_bad_specs_are_one_clear_error(spec_type: type, params: dict, field: str) -> None:
    with pytest.raises(specs.InvalidSpec) as info:
        specs.build(spec_type, params)
    assert info.value.exit_code == 14
    assert field in info.value.get_message()


@pytest.mark.parametrize("field", ["source", "name"])
def test_a_path_that_is_not_utf8_is_named_as_such(field: str) -> None:
    """A path from the shell with bytes that are not UTF-8 (``surrogateescape``) cannot travel
    in a job's JSON options: the error says so instead of speaking of "raw data"."""
    params = {"repo": "/r", "source": "/s", "name": "n", field: "/srv/caf\udce9"}
    with pytest.raises(specs.InvalidSpec) as info:
        specs.build(specs.BackupFilesSpec, params)
    assert info.value.exit_code == 14
    assert f"{field}: not valid UTF-8 text" in info.value.get_message()
    assert "raw data" not in info.value.get_message()


def test_an_orchestrated_run_refuses_text_json_cannot_carry_before_it_starts() -> None:
    """``restore files 'p@latest:/caf\\xe9.txt'`` runs directly; orchestrated, its spec would
    go to Prefect's API as JSON, which cannot carry the byte — a typed error (exit 14) before
    anything starts, not httpx's UnicodeEncodeError."""
    from vmkeep.flows.run import run
    from vmkeep.jobs.restore_files import restore_files
    from vmkeep.jobs.restore_specs import RestoreFilesSpec

    spec = specs.build(RestoreFilesSpec, {"repo": "/r", "point": "p@latest",
                                          "paths": ["/ok", "/caf\udce9.txt"], "target": "/t"})
    with pytest.raises(specs.InvalidSpec) as info:
        run(restore_files, spec, orchestrate=True)
    assert info.value.exit_code == 14
    assert "paths: not valid UTF-8 text" in info.value.get_message()
    specs.require_utf8(specs.build(RestoreFilesSpec, {"repo": "/r", "point": "p@latest",
                                                      "paths": ["/日本"], "target": "/t"}))


def test_cbt_options_travel_in_the_spec_and_to_each_child() -> None:
    """#15's options (CBT on by default, periodic scans, the audit share) are spec fields."""
    spec = specs.build(specs.BackupVmSpec, {"repo": "/r", "vm": "x", "vcenter": "vc"})
    assert spec.enable_cbt and spec.scan_every == 30 and spec.cbt_audit == "0.5"
    assert spec.audit_policy() is not None and spec.audit_policy().percent == 0.5  # type: ignore[union-attr]
    off = specs.build(specs.BackupVmSpec, {"repo": "/r", "vm": "x", "vcenter": "vc",
                                           "cbt_audit": "off", "scan_every": 0})
    assert off.audit_policy() is None and off.scan_every == 0
    many = specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc", "cbt_audit": 2,
                                             "scan_every": 7, "enable_cbt": False})
    child = many.for_vm("uuid-1")
    assert (child.cbt_audit, child.scan_every, child.enable_cbt) == ("2", 7, False)
    for bad in ({"cbt_audit": "lots"}, {"cbt_audit": "150"}, {"scan_every": -1}):
        with pytest.raises(specs.InvalidSpec) as info:
            specs.build(specs.BackupVmSpec, {"repo": "/r", "vm": "x", "vcenter": "vc", **bad})
        assert next(iter(bad)) in info.value.get_message()


def test_file_spec_names_where_the_source_password_is_never_the_password() -> None:
    """#24: the spec (recorded by Prefect) holds a password file or Secret block name only."""
    spec = specs.build(specs.BackupFilesSpec, {
        "repo": "/r", "source": "sftp://u@guest/srv", "name": "n",
        "source_password_file": "/etc/vmkeep/pw", "source_password_block": "guest-pw",
    })
    assert spec.source_password_file == "/etc/vmkeep/pw"
    with pytest.raises(specs.InvalidSpec):
        specs.build(specs.BackupFilesSpec,
                    {"repo": "/r", "source": "/s", "name": "n", "source_password": "x"})


def test_empty_file_source_commits_nothing(tmp_path: Path) -> None:
    """Issue 19: backup-files with an empty source committed an empty, nameless point."""
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    from vmkeep.flows.backup_files import backup_files

    with pytest.raises(specs.InvalidSpec):
        run_flow(backup_files, False, repo=str(repo), source="", name="")
    assert Repository.open(str(repo)).list_points() == []


def test_sweep_deadline_is_the_first_hourly_run_past_the_minimum_age() -> None:
    from datetime import UTC, datetime

    from vmkeep.jobs.backup_vm import sweep_deadline

    assert sweep_deadline(datetime(2026, 12, 2, 1, 10, tzinfo=UTC)) == datetime(
        2026, 12, 2, 3, 15, tzinfo=UTC)
    assert sweep_deadline(datetime(2026, 12, 2, 1, 20, tzinfo=UTC)) == datetime(
        2026, 12, 2, 4, 15, tzinfo=UTC)


def test_report_ratios_are_defined() -> None:
    from vmkeep.jobs.backup_vm import report_row

    disk = {"bytes_read": 8_000_000, "bytes_new": 2_000_000, "bytes_stored": 500_000,
            "size": 16_000_000, "mode": "full", "reason": "first"}
    row = report_row({"vm": "db01", "id": "abc", "disks": [disk], "duration_s": 1.0,
                      "snapshot_held_s": 0.5, "snapshot_removed": True, "warnings": []})
    assert row["dedupe ratio"] == 4.0 and row["compression ratio"] == 4.0
    assert row["restore point"] == "abc" and row["excluded MB"] == 0
    swapless = dict(disk, bytes_excluded=3_000_000)
    row = report_row({"vm": "db01", "id": "abc", "disks": [swapless, swapless], "duration_s": 1.0,
                      "snapshot_held_s": 0.5, "snapshot_removed": True, "warnings": []})
    assert row["excluded MB"] == 6.0
    nothing_new = dict(disk, bytes_new=0, bytes_stored=0)
    row = report_row({"vm": "db01", "id": "abc", "disks": [nothing_new], "duration_s": 1.0,
                      "snapshot_held_s": 0.5, "snapshot_removed": True, "warnings": []})
    assert row["dedupe ratio"] is None and row["compression ratio"] is None


def test_jobs_refuse_a_repository_url_with_a_password(tmp_path: Path) -> None:
    """#24: every backup job refuses a URL carrying a password, before anything is opened."""
    from vmkeep.errors import InputError
    from vmkeep.flows.backup_files import backup_files
    from vmkeep.flows.backup_image import backup_image

    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * 4096)
    repo = "sftp://u:CANARY-job@127.0.0.1/repo"
    with pytest.raises(InputError) as info:
        run_flow(backup_image, False, repo=repo, path=str(image), name="img")
    assert "CANARY" not in str(info.value)
    with pytest.raises(InputError):
        run_flow(backup_files, False, repo=repo, source=str(tmp_path), name="files")


def test_exclusions_and_retries_travel_in_the_spec_and_the_children_never_retry() -> None:
    many = specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc", "patterns": ["*"],
                                             "exclude": ["test-*"], "retries": 3,
                                             "retry_wait_s": 60})
    assert many.exclude == ["test-*"] and many.retries == 3
    assert "exclude=['test-*']" in many.selection()
    child = many.for_vm("uuid-1")
    assert child.retries == 0 and child.retry_wait_s == 60
    for blank in ("", "  ", None):  # an unset deployment variable renders so: no exclusions
        spec = specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc",
                                                 "exclude": blank})
        assert spec.exclude == []
    with pytest.raises(specs.InvalidSpec):
        specs.build(specs.BackupVmSpec, {"repo": "/r", "vm": "x", "vcenter": "vc",
                                         "retries": 11})


def test_guest_scripts_go_to_each_vm_by_name_uuid_or_first_matching_pattern() -> None:
    many = specs.build(specs.BackupVmsSpec, {
        "repo": "/r", "vcenter": "vc", "guest_password_file": "/etc/vmkeep/guest.pw",
        "guest_scripts": {"db*": {"pre_freeze": "/freeze"}, "*": {"pre_freeze": "/sync"},
                          "db02": {"post_thaw": "/thaw"}, "uuid-9": {"pre_freeze": "/nine"}}})
    assert many.for_vm("uuid-1", "db01").pre_freeze == "/freeze"
    db02 = many.for_vm("uuid-2", "db02")  # its name beats the patterns
    assert (db02.pre_freeze, db02.post_thaw) == (None, "/thaw")
    assert many.for_vm("uuid-9", "web9").pre_freeze == "/nine"
    assert many.for_vm("uuid-3", "web1").pre_freeze == "/sync"
    assert many.for_vm("uuid-3", "web1").guest_password_file == "/etc/vmkeep/guest.pw"
    assert specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc",
                                             "guest_scripts": ""}).guest_scripts == {}
    with pytest.raises(specs.InvalidSpec):  # a typo in a script's key is refused
        specs.build(specs.BackupVmsSpec, {"repo": "/r", "vcenter": "vc",
                                          "guest_scripts": {"db*": {"pre_frezee": "/x"}}})


@pytest.mark.parametrize("name", ["latest", "db@latest", "two\nlines", "tab\there", "bell\x07",
                                  " ", "   "])
def test_a_point_name_that_reads_as_a_reference_or_hides_a_character_is_refused(
    name: str,
) -> None:
    """``--name latest`` or ``--name db@latest`` made points that ``db@latest`` could never
    reach (it names the newest point of ``db``); a newline or tab in a name broke listings, and
    a blank name was listed as none.  Any other text is a name (``web:01``, ``a/b``, ``日本``)."""
    for spec_type, params in ((specs.BackupImageSpec, {"path": "/d.img"}),
                              (specs.BackupFilesSpec, {"source": "/srv"})):
        with pytest.raises(specs.InvalidSpec) as info:
            specs.build(spec_type, {"repo": "/r", "name": name, **params})
        assert "name: " in info.value.get_message()
        assert "Value error" not in info.value.get_message()
    for fine in ("web:01", "a/b", "日本", "latest-db", "db@2026"):
        specs.build(specs.BackupImageSpec, {"repo": "/r", "name": fine, "path": "/d.img"})
