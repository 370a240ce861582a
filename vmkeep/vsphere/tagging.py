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
  → ``[{tag_id, object_ids: [{type, id}]}]``.

Every answer is ``{"value": …}``.  TLS is the SOAP session's (same CA, pin or insecure choice);
the credentials are the session's own.

Contract of :func:`vms_with_tag`: the morefs (``vm-42``) of the VMs a tag is attached to;
``TAG`` alone is looked up in every category (an ambiguous name is an error); an unknown
category or tag raises :class:`TagNotFound`, a tag attached to no VM raises
:class:`TagMatchesNoVM` — never an empty success.  Read-only.
"""

from __future__ import annotations

import contextlib
import json
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


class TagNotFound(VSphereError):
    """vSphere tag {!r} not found: {}"""

    exit_code = 14


class TagMatchesNoVM(VSphereError):
    """vSphere tag {!r} is attached to no VM."""

    exit_code = 14


class TaggingUnavailable(VSphereError):
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
            raise TaggingUnavailable(self.where, "no vAPI endpoint (/rest) answered")
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
            raise TaggingUnavailable(self.where, f"{method} {path}: HTTP {value.status}")
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
        ids = self._get("GET", "/cis/tagging/category") or []
        return {i: self._get("GET", f"/cis/tagging/category/id:{quote(i)}")["name"] for i in ids}

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


class _Failure:
    def __init__(self, status: int, raw: bytes) -> None:
        self.status = status
        self.raw = raw


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
