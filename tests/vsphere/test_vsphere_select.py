"""VM selection by name, glob, folder, host, cluster, and the morefs a tag is attached to."""

from __future__ import annotations

from vmkeep.vsphere.inventory import VMInfo, select_vms, unmatched


def vm(name: str, folder: str = "/DC0/vm", host: str = "h1", cluster: str | None = "c1",
       template: bool = False) -> VMInfo:
    return VMInfo(
        ref=None, moid=f"vm-{name}", name=name, instance_uuid=f"uuid-{name}", bios_uuid=None,
        datacenter="DC0", folder=folder, host=host, cluster=cluster, datastores=("ds1",),
        power_state="poweredOn", template=template, guest_id=None, cbt_enabled=True,
        consolidation_needed=False, vmx_path=None, disks=(),
    )


VMS = [
    vm("web1", folder="/DC0/vm/prod/web"),
    vm("web2", folder="/DC0/vm/prod/web", host="h2"),
    vm("db1", folder="/DC0/vm/prod", cluster="c2", host="h3"),
    vm("test1", folder="/DC0/vm/test", cluster=None),
    vm("tpl", template=True),
]


def names(**kw: object) -> list[str]:
    return [v.name for v in select_vms(VMS, **kw)]  # type: ignore[arg-type]


def test_selection() -> None:
    assert names() == ["web1", "web2", "db1", "test1"]
    assert names(names=["db1"], patterns=["web*"]) == ["web1", "web2", "db1"]
    assert names(folder="prod") == ["web1", "web2", "db1"]
    assert names(folder="/DC0/vm/prod/web") == ["web1", "web2"]
    assert names(folder="prod/we") == []
    assert names(host="h2") == ["web2"]
    assert names(cluster="c2") == ["db1"]
    gold = {"vm-web1", "vm-db1"}
    assert names(tagged=gold) == ["web1", "db1"]
    assert names(patterns=["web*"], tagged=gold) == ["web1"]
    assert names(tagged=set()) == []
    assert names(patterns=["t*"], include_templates=True) == ["test1", "tpl"]


def test_a_folder_takes_the_vms_of_its_vapps_and_a_vapps_path_takes_its_vms() -> None:
    """As the vSphere Client shows a vApp's VMs: below the vApp, in the vApp's folder."""
    import dataclasses

    in_app = dataclasses.replace(vm("app-db", folder="/DC0/vm/prod"), vapp="shop")
    vms = [*VMS, in_app]
    assert [v.name for v in select_vms(vms, folder="prod")] == ["web1", "web2", "db1", "app-db"]
    assert [v.name for v in select_vms(vms, folder="prod/shop")] == ["app-db"]
    assert [v.name for v in select_vms(vms, folder="/DC0/vm/prod/shop")] == ["app-db"]
    assert [v.name for v in select_vms(vms, folder="prod/web")] == ["web1", "web2"]


def test_a_template_is_selected_when_named_exactly_never_by_a_pattern() -> None:
    """As ``backup vm tpl`` backs it up alone: named beside other VMs it was "not found"."""
    assert names(names=["tpl", "web1"]) == ["web1", "tpl"]
    assert names(names=["uuid-tpl"]) == ["tpl"]
    assert names(patterns=["t*"]) == ["test1"]
    assert names(names=["tpl"], folder="prod") == []  # the other filters still hold


def test_names_match_by_instance_uuid_and_what_matched_nothing_is_named() -> None:
    assert names(names=["uuid-db1", "web1"]) == ["web1", "db1"]
    chosen = select_vms(VMS, names=["uuid-db1", "gone", "test1"], patterns=["web*", "zz*"],
                        folder="prod")
    assert [v.name for v in chosen] == ["web1", "web2", "db1"]
    # test1 exists but lies outside the folder: as unmatched as a VM that is gone
    assert unmatched(chosen, ["uuid-db1", "gone", "test1"], ["web*", "zz*"]) == (
        ["gone", "test1"], ["zz*"])


def test_exclusions_match_names_instance_uuids_and_globs() -> None:
    from vmkeep.vsphere.inventory import excluded

    chosen = select_vms(VMS)
    left = [v.name for v in chosen if not excluded(v, ["web*", "uuid-db1"])]
    assert left == ["test1"]
    assert not excluded(vm("web1"), [])
    assert not excluded(vm("web1"), ["Web1"])  # case-sensitive, as the names vSphere keeps
