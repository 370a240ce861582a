"""vSphere tags from the lab's vAPI tagging service (:mod:`vmkeep.vsphere.tagging`): VMs by
``CATEGORY:TAG`` or bare ``TAG``, typed errors for unknown and unattached tags and a refused
vAPI login; ``VirtualMachine.tag`` plays no part."""

from __future__ import annotations

from typing import Any

import pytest

from vmkeep.lab.access import LAB_TAGS
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.errors import AuthenticationFailed
from vmkeep.vsphere.inventory import list_vms, select_vms
from vmkeep.vsphere.tagging import (
    TaggingClient,
    TagMatchesNoVM,
    TagNotFound,
    parse_tag,
    vms_with_tag,
)
from vmkeep.vsphere.tls import TLSOptions

pytestmark = pytest.mark.lab


def _session(lab: Any, user: str | None = None, password: str | None = None) -> Any:
    return connect(lab.url, Credentials(user or lab.user, password or lab.password),
                   TLSOptions(cafile=lab.cafile))


def test_parse_tag() -> None:
    assert parse_tag("backup-policy:gold") == ("backup-policy", "gold")
    assert parse_tag("gold") == (None, "gold")
    assert parse_tag(" env : prod ") == ("env", "prod")


def test_vms_by_category_and_tag(lab: Any) -> None:
    morefs = {v["name"]: v["moref"] for v in lab.vms}
    with _session(lab) as s:
        for spec in LAB_TAGS:
            want = {morefs[n] for n in spec["vms"] if n in morefs}
            text = f"{spec['category']}:{spec['name']}"
            if not want:
                with pytest.raises(TagMatchesNoVM) as caught:
                    vms_with_tag(s, text)
                assert caught.value.exit_code == 14 and text in caught.value.get_message()
                continue
            assert vms_with_tag(s, text) == want
        gold = vms_with_tag(s, "gold")  # unique across categories
        assert gold == {morefs["small05"], morefs["small06"]}
        chosen = select_vms(list_vms(s), tagged=gold, patterns=["*06"])
        assert [v.name for v in chosen] == ["small06"]


def test_unknown_category_or_tag_is_a_typed_error(lab: Any) -> None:
    with _session(lab) as s:
        with pytest.raises(TagNotFound, match="no category 'nope'"):
            vms_with_tag(s, "nope:gold")
        with pytest.raises(TagNotFound, match="no tag 'platinum'"):
            vms_with_tag(s, "backup-policy:platinum")
        with pytest.raises(TagNotFound, match="empty"):
            vms_with_tag(s, "backup-policy:")


def test_vapi_login_uses_the_sessions_credentials(lab: Any) -> None:
    with _session(lab) as s:
        with TaggingClient(s) as client:
            assert set(client.categories().values()) == {t["category"] for t in LAB_TAGS}
        s._credentials = Credentials(lab.user, "wrong-password")
        with pytest.raises(AuthenticationFailed):
            TaggingClient(s).login()
