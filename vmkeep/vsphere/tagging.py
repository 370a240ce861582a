"""vSphere tags: which VMs carry ``CATEGORY:TAG``, from vCenter's vAPI tagging service.

vSphere tags are not in the VIM API (``VirtualMachine.tag`` holds no vSphere tags); they live
in the vAPI REST service.  This module uses its ``/rest`` form, served by vCenter 6.5 to 8
(and by the lab's vcsim):

* ``POST /rest/com/vmware/cis/session`` with HTTP basic auth → a session id, sent afterwards
  as the ``vmware-api-session-id`` header; ``DELETE`` of the same path logs out;
* ``GET /rest/com/vmware/cis/tagging/category`` → category ids; ``GET …/category/id:{id}`` →
  ``{name, …}``;
* ``POST …/tag/id:{category}?~action=list-tags-for-category`` → tag ids; ``GET …/tag/id:{id}``;
* ``POST …/tag-association?~action=list-attached-objects-on-tags`` with ``{"tag_ids": [...]}``
  → ``[{tag_id, object_ids: [{type, id}]}]``;
* ``POST …/tag-association?~action=list-attached-tags-on-objects`` with ``{"object_ids": [{type,
  id}, …]}`` → ``[{object_id, tag_ids}]``; ``POST …/tag-association/id:{tag}?~action=attach``
  with ``{"object_id": {type, id}}`` attaches a tag (``InventoryService.Tagging.AttachTag`` on
  the object).

Every answer is ``{"value": …}``.  TLS is the SOAP session's (same CA, pin or insecure choice);
the credentials are the session's own.

Contract of :func:`vms_with_tag`: the morefs (``vm-42``) of the VMs a tag is attached to;
``TAG`` alone is looked up in every category (an ambiguous name is an error); an unknown
category or tag raises :class:`TagNotFound`, a tag attached to no VM raises
:class:`TagMatchesNoVM` — never an empty success.  Read-only.

:func:`tags_of_vm` / :func:`tags_of_vms` (a backup records them; a many-VM run reads them for all
its VMs at once) return VMs' tags as ``CATEGORY:TAG`` names, and
:func:`attach_tags` (a VM restore) attaches the named tags that exist to a VM and says which do
not — tags are matched by name, so a restore into another vCenter finds its own tags of those
names.  Both raise :class:`TaggingUnavailable` where there is no tagging service (a standalone
ESXi host).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    VSphereError,
)
from vmkeep.vsphere.httpclient import TRANSFER_ERRORS, https_pool

REST = "/rest/com/vmware"
SESSION_HEADER = "vmware-api-session-id"
#: VMs per ``list-attached-tags-on-objects`` request (vCenter documents no limit; a bound keeps
#: each request and answer small)
OBJECTS_PER_CALL = 200


class TagNotFound(VSphereError):
    """vSphere tag {!r} not found: {}"""

    exit_code = 14


class TagMatchesNoVM(VSphereError):
    """vSphere tag {!r} is attached to no VM."""

    exit_code = 14


class TaggingUnavailable(VSphereError):
    """vSphere tagging service on {} unavailable: {}"""


class NoTaggingService(TaggingUnavailable):
    """vSphere tagging service on {} unavailable: {}"""


def parse_tag(text: str) -> tuple[str | None, str]:
    """``"CATEGORY:TAG"`` → ``(category, tag)``; ``"TAG"`` → ``(None, tag)``."""
    category, sep, tag = text.partition(":")
    if not sep:
        return None, text.strip()
    return category.strip() or None, tag.strip()


class TaggingClient:
    """A vAPI session on the SOAP session's endpoint; use as a context manager."""

    def __init__(self, session: Session, *, timeout: float = 60.0) -> None:
        self.session = session
        self.where = f"{session.host}:{session.port}"
        self._pool = https_pool(session.host, session.port, session.ssl_context, timeout, 1)
        self._id: str | None = None

    def __enter__(self) -> TaggingClient:
        self.login()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None, *, login: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if login:
            headers["Authorization"] = self.session.basic_authorization()
        elif self._id:
            headers[SESSION_HEADER] = self._id
        try:
            resp = self._pool.urlopen(method, REST + path, body=data, headers=headers,
                                      redirect=False)
            raw = resp.data
        except TRANSFER_ERRORS as exc:
            raise ConnectionFailed(self.where, f"{type(exc).__name__} (tagging {path})") from None
        if login and resp.status in (401, 403):
            raise AuthenticationFailed(self.session.user)
        if resp.status == 404 and login:
            raise NoTaggingService(self.where, "no vAPI endpoint (/rest) answered")
        if resp.status >= 400:
            return _Failure(resp.status, raw)
        if not raw:
            return None
        try:
            return json.loads(raw).get("value")
        except (ValueError, AttributeError):
            raise TaggingUnavailable(self.where, f"not a vAPI answer to {path}") from None

    def _get(self, method: str, path: str, body: Any = None) -> Any:
        value = self._call(method, path, body)
        if isinstance(value, _Failure):
            detail = value.message()
            raise TaggingUnavailable(
                self.where, f"{method} {path}: HTTP {value.status}" + (f": {detail}" if detail
                                                                        else ""))
        return value

    def login(self) -> None:
        value = self._call("POST", "/cis/session", login=True)
        if not isinstance(value, str) or not value:
            raise TaggingUnavailable(self.where, "session login gave no id")
        self._id = value

    def close(self) -> None:
        if self._id:
            with contextlib.suppress(VSphereError):  # the session expires on its own
                self._call("DELETE", "/cis/session")
            self._id = None
        self._pool.close()

    def categories(self) -> dict[str, str]:
        """``{category id: name}``."""
        return {i: self.category_name(i) for i in self._get("GET", "/cis/tagging/category") or []}

    def category_name(self, category_id: str) -> str:
        return str(self._get("GET", f"/cis/tagging/category/id:{quote(category_id)}")["name"])

    def tags(self, category_id: str) -> dict[str, str]:
        """``{tag id: name}`` of one category."""
        ids = self._get(
            "POST", f"/cis/tagging/tag/id:{quote(category_id)}?~action=list-tags-for-category"
        ) or []
        return {i: self._get("GET", f"/cis/tagging/tag/id:{quote(i)}")["name"] for i in ids}

    def attached_vms(self, tag_ids: list[str]) -> set[str]:
        """Morefs of the VMs any of ``tag_ids`` is attached to."""
        found = self._get(
            "POST",
            "/cis/tagging/tag-association?~action=list-attached-objects-on-tags",
            {"tag_ids": tag_ids},
        ) or []
        return {
            obj["id"]
            for entry in found
            for obj in entry.get("object_ids") or []
            if obj.get("type") == "VirtualMachine"
        }


    def attached_tags(self, vm_moids: Sequence[str]) -> dict[str, list[str]]:
        """Tag ids attached to each VM of ``vm_moids`` (every one present, ``[]`` untagged): one
        ``list-attached-tags-on-objects`` call per :data:`OBJECTS_PER_CALL` VMs."""
        out: dict[str, list[str]] = {moid: [] for moid in vm_moids}
        moids = list(out)
        for start in range(0, len(moids), OBJECTS_PER_CALL):
            found = self._get(
                "POST", "/cis/tagging/tag-association?~action=list-attached-tags-on-objects",
                {"object_ids": [{"type": "VirtualMachine", "id": m}
                                for m in moids[start:start + OBJECTS_PER_CALL]]},
            ) or []
            for entry in found:
                moid = (entry.get("object_id") or {}).get("id")
                if moid in out:
                    out[moid] = list(entry.get("tag_ids") or [])
        return out

    def names(self, tag_ids: Iterable[str]) -> dict[str, str]:
        """``{tag id: "CATEGORY:TAG"}``: one lookup per distinct tag and category."""
        categories: dict[str, str] = {}
        out = {}
        for tag_id in dict.fromkeys(tag_ids):
            tag = self.tag(tag_id)
            cat = str(tag.get("category_id", ""))
            if cat not in categories:
                categories[cat] = self.category_name(cat)
            out[tag_id] = f"{categories[cat]}:{tag.get('name')}"
        return out

    def tag(self, tag_id: str) -> dict[str, Any]:
        """``{name, category_id, …}`` of one tag."""
        return dict(self._get("GET", f"/cis/tagging/tag/id:{quote(tag_id)}") or {})

    def attach(self, tag_id: str, vm_moid: str) -> None:
        """Attach tag ``tag_id`` to the VM ``vm_moid``."""
        self._get("POST", f"/cis/tagging/tag-association/id:{quote(tag_id)}?~action=attach",
                  {"object_id": {"type": "VirtualMachine", "id": vm_moid}})


def tags_of_vm(session: Session, vm_moid: str) -> list[str]:
    """The VM's tags as ``CATEGORY:TAG``, sorted (see the module doc)."""
    return tags_of_vms(session, [vm_moid])[vm_moid]


def tags_of_vms(session: Session, vm_moids: Sequence[str]) -> dict[str, list[str]]:
    """Each VM's tags as ``CATEGORY:TAG``, sorted — in one vAPI session, with one association
    query per :data:`OBJECTS_PER_CALL` VMs and one lookup per distinct tag and category (a run
    over 500 VMs logs in once, not 500 times)."""
    with TaggingClient(session) as client:
        attached = client.attached_tags(vm_moids)
        names = client.names(t for ids in attached.values() for t in ids)
    return {moid: sorted(names[t] for t in ids) for moid, ids in attached.items()}


def attach_tags(session: Session, vm_moid: str, wanted: list[str]) -> tuple[list[str], list[str]]:
    """Attach the tags ``wanted`` (``CATEGORY:TAG``) that exist to VM ``vm_moid``: (attached,
    missing)."""
    if not wanted:
        return [], []
    with TaggingClient(session) as client:
        ids: dict[str, str] = {}
        for cat_id, cat_name in client.categories().items():
            for tag_id, tag_name in client.tags(cat_id).items():
                ids[f"{cat_name}:{tag_name}"] = tag_id
        attached, missing = [], []
        for name in wanted:
            if name in ids:
                client.attach(ids[name], vm_moid)
                attached.append(name)
            else:
                missing.append(name)
    return attached, missing


class _Failure:
    def __init__(self, status: int, raw: bytes) -> None:
        self.status = status
        self.raw = raw

    def message(self) -> str:
        """The vAPI error's messages (``{"type", "value": {"messages": [{"default_message"}]}}``),
        or ``""``."""
        try:
            value = json.loads(self.raw).get("value") or {}
            texts = [str(m.get("default_message")) for m in value.get("messages") or []
                     if isinstance(m, dict) and m.get("default_message")]
        except (ValueError, AttributeError):
            return ""
        return "; ".join(texts)[:300]


def vms_with_tag(session: Session, text: str) -> set[str]:
    """Morefs of the VMs tagged ``text`` (``CATEGORY:TAG`` or ``TAG``); see the module doc."""
    category, tag = parse_tag(text)
    if not tag:
        raise TagNotFound(text, "empty tag name")
    with TaggingClient(session) as client:
        cats = client.categories()
        chosen = [i for i, n in cats.items() if category is None or n == category]
        if category is not None and not chosen:
            known = ", ".join(sorted(cats.values())) or "none"
            raise TagNotFound(text, f"no category {category!r} (categories: {known})")
        matches = [
            (cats[c], tid) for c in chosen for tid, name in client.tags(c).items() if name == tag
        ]
        if not matches:
            where = f"category {category!r}" if category else "any category"
            raise TagNotFound(text, f"no tag {tag!r} in {where}")
        if len({c for c, _ in matches}) > 1:
            names = ", ".join(sorted(f"{c}:{tag}" for c, _ in matches))
            raise TagNotFound(text, f"ambiguous, say which category: {names}")
        vms = client.attached_vms([tid for _, tid in matches])
    if not vms:
        raise TagMatchesNoVM(text)
    return vms
