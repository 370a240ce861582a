"""Immutable repositories on S3 Object Lock: backup credentials can add, never destroy.

The guarantee is enforced by the object store, not by vmkeep, because a ransomware operator who
holds the backup host's credentials runs whatever client they like.  Three parts:

1. **Object Lock default retention** on the bucket (:func:`enable`): every object version
   written — packs, indexes, manifests, key files, the config — is WORM for ``days``.  In
   ``COMPLIANCE`` mode nobody (not even the account root) can delete or shorten it; in
   ``GOVERNANCE`` mode only a principal granted ``s3:BypassGovernanceRetention`` can.  Object
   Lock implies versioning: a PUT over an existing key adds a *new* version and a DELETE without
   a version id adds a *delete marker*; the locked versions stay.
2. **Two sets of credentials** (:func:`iam_policy`): *backup* may list, read and put objects
   under the repository prefix and delete only ``locks/`` (lock release); *prune* may also
   delete (``forget``, ``prune``).  Neither may delete object versions, change retention or the
   bucket's lock, versioning or lifecycle configuration — only the bucket *admin* may.
   vmkeep's backup paths never delete anything outside ``locks/`` (see
   :mod:`vmkeep.storage.backend`'s contract), so they work unchanged with the backup policy.
3. **Recovery** (:func:`repair`): the objects vmkeep writes as ``config``, ``config.sealed``,
   ``keys/``, ``packs/``, ``index/``, ``manifests/`` and ``forgotten/`` are written once and never
   rewritten (content-named, or unique names), so the *oldest* version of such a key is the
   genuine one.  ``repair`` puts the oldest version back wherever a later PUT replaced it
   (copying it, so the history stays), and with ``undelete_since`` removes delete markers
   created since a given time (an attacker who stole the *prune* credentials).

Space: ``forget``/``prune`` only add delete markers on a locked bucket; the versions they hide
are removed by the lifecycle rule :func:`enable` installs (non-current versions expire one day
after they stop being current, and S3 keeps any version still under retention until it
expires).

Who may call what: :func:`status` and :func:`iam_policy` need read access; :func:`enable` needs
the bucket admin (``s3:PutBucketObjectLockConfiguration``, ``s3:PutLifecycleConfiguration``);
:func:`repair` needs ``s3:ListBucketVersions``, ``s3:GetObjectVersion``, ``s3:PutObject`` and,
for undelete, ``s3:DeleteObjectVersion`` on delete markers (never on locked data).
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from vmkeep.storage.backend import Backend
from vmkeep.storage.errors import StorageError, TargetPermissionDenied

MODES = ("COMPLIANCE", "GOVERNANCE")
#: Objects written once and never rewritten: the oldest version is the genuine one.
#: (``locks/`` and ``catalog/`` are rewritten legitimately and never repaired.)
WRITE_ONCE_KEYS = frozenset({"config", "config.sealed"})
WRITE_ONCE_PREFIXES = ("keys/", "packs/", "index/", "manifests/", "forgotten/")
LIFECYCLE_RULE_PREFIX = "vmkeep-noncurrent-"


class ObjectLockError(StorageError):
    """Object Lock on {}: {}"""

    exit_code = 15


@dataclass
class ObjectLockStatus:
    """What the bucket enforces (read live from S3: the bucket, not vmkeep, is authoritative)."""

    bucket: str
    prefix: str
    versioning: str
    object_lock: bool
    mode: str | None = None
    days: int | None = None
    lifecycle_rule: bool = False

    @property
    def immutable(self) -> bool:
        return self.object_lock and self.mode in MODES and bool(self.days)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "immutable": self.immutable}


@dataclass
class RepairReport:
    """What :func:`repair` found and did; ``restored`` and ``undeleted`` list object keys."""

    restored: list[str] = field(default_factory=list)
    undeleted: list[str] = field(default_factory=list)
    examined: int = 0
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Bucket:
    """The S3 client and bucket/prefix behind a backend (unwrapping retry and cipher layers)."""

    def __init__(self, backend: Backend) -> None:
        inner: Any = backend
        while hasattr(inner, "inner"):
            inner = inner.inner
        if getattr(inner, "protocol", None) not in ("s3", "s3a"):
            raise ObjectLockError(backend.location, "only S3 repositories (s3://) support it")
        self.location = backend.location
        self.fs = inner.fs
        bucket, _, prefix = inner.root.partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def call(self, method: str, **kwargs: Any) -> Any:
        """One S3 API call; errors become typed storage errors (``None`` for the not-found
        codes the caller passes in ``missing_ok``)."""
        missing_ok = kwargs.pop("missing_ok", ())
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, **kwargs)
        except Exception as exc:  # botocore's ClientError, or s3fs's translated OSError
            code = _error_code(exc)
            if code in missing_ok:
                return None
            if code in ("AccessDenied", "403") or isinstance(exc, PermissionError):
                raise TargetPermissionDenied(f"{method} on {self.bucket}: {exc}") from None
            raise ObjectLockError(self.location, f"{method}: {code or exc}") from None

    def restore_version(self, key: str, version_id: str) -> None:
        """Make ``version_id`` of ``key`` current again by writing its bytes as a new version
        (with Content-MD5, which a locked bucket requires of every write; a server-side copy
        would be cheaper but not every S3 implementation accepts it on a locked bucket)."""
        from fsspec.asyn import sync

        response = self.call("get_object", Key=key, VersionId=version_id)
        data = sync(self.fs.loop, response["Body"].read)
        digest = base64.b64encode(hashlib.md5(data).digest()).decode()
        self.call("put_object", Key=key, Body=data, ContentMD5=digest)


def _error_code(exc: BaseException) -> str:
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    text = str(exc)
    for code in (
        "ObjectLockConfigurationNotFoundError",
        "NoSuchLifecycleConfiguration",
        "InvalidRequest",
        "AccessDenied",
    ):
        if code in text:
            return code
    return ""


_LOCK_MISSING = ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration")
_LIFECYCLE_MISSING = ("NoSuchLifecycleConfiguration",)


def _rule_id(prefix: str) -> str:
    return LIFECYCLE_RULE_PREFIX + hashlib.sha256(prefix.encode()).hexdigest()[:12]


def status(backend: Backend) -> ObjectLockStatus:
    """The bucket's versioning, default retention and vmkeep's lifecycle rule."""
    b = _Bucket(backend)
    versioning = b.call("get_bucket_versioning") or {}
    lock = b.call("get_object_lock_configuration", missing_ok=_LOCK_MISSING) or {}
    conf = lock.get("ObjectLockConfiguration") or {}
    retention = (conf.get("Rule") or {}).get("DefaultRetention") or {}
    days = retention.get("Days") or 0
    days += 365 * (retention.get("Years") or 0)
    lifecycle = b.call("get_bucket_lifecycle_configuration", missing_ok=_LIFECYCLE_MISSING) or {}
    rule_id = _rule_id(b.prefix)
    return ObjectLockStatus(
        bucket=b.bucket,
        prefix=b.prefix,
        versioning=str(versioning.get("Status") or "Disabled"),
        object_lock=conf.get("ObjectLockEnabled") == "Enabled",
        mode=retention.get("Mode"),
        days=days or None,
        lifecycle_rule=any(r.get("ID") == rule_id for r in lifecycle.get("Rules") or []),
    )


def enable(backend: Backend, days: int, mode: str = "COMPLIANCE") -> ObjectLockStatus:
    """Set the bucket's default retention to ``mode``/``days`` and install the lifecycle rule
    that expires non-current versions under the repository prefix.  Idempotent.  The bucket
    must have been created with Object Lock (``aws s3api create-bucket
    --object-lock-enabled-for-bucket``) or have versioning enabled (S3 then allows enabling
    Object Lock on it); otherwise :class:`ObjectLockError` says so."""
    mode = mode.upper()
    if mode not in MODES:
        raise ObjectLockError(backend.location, f"mode must be one of {', '.join(MODES)}")
    if not 1 <= days <= 36500:
        raise ObjectLockError(backend.location, "retention must be 1 to 36500 days")
    b = _Bucket(backend)
    versioning = (b.call("get_bucket_versioning") or {}).get("Status")
    lock = b.call("get_object_lock_configuration", missing_ok=_LOCK_MISSING) or {}
    lock_enabled = (lock.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled")
    if lock_enabled != "Enabled" and versioning != "Enabled":
        raise ObjectLockError(
            backend.location,
            f"bucket {b.bucket} has neither Object Lock nor versioning; create it with "
            "Object Lock enabled (aws s3api create-bucket --object-lock-enabled-for-bucket)",
        )
    b.call(
        "put_object_lock_configuration",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": mode, "Days": days}},
        },
    )
    lifecycle = b.call("get_bucket_lifecycle_configuration", missing_ok=_LIFECYCLE_MISSING) or {}
    rule_id = _rule_id(b.prefix)
    rules = [r for r in lifecycle.get("Rules") or [] if r.get("ID") != rule_id]
    rules.append(
        {
            "ID": rule_id,
            "Status": "Enabled",
            "Filter": {"Prefix": f"{b.prefix}/" if b.prefix else ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        }
    )
    b.call("put_bucket_lifecycle_configuration", LifecycleConfiguration={"Rules": rules})
    return status(backend)


def iam_policy(bucket: str, prefix: str, role: str) -> dict[str, Any]:
    """The IAM policy document for ``role``: ``"backup"`` (add only; may delete ``locks/``),
    ``"prune"`` (also forget and prune), or ``"restore"`` (read only).  Version deletion,
    retention and bucket configuration are denied to all three."""
    if role not in ("backup", "prune", "restore"):
        raise ValueError(f"unknown role {role!r}")
    prefix = prefix.strip("/")
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    locks = (
        f"arn:aws:s3:::{bucket}/{prefix}/locks/*" if prefix else f"arn:aws:s3:::{bucket}/locks/*"
    )
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListRepository",
            "Effect": "Allow",
            "Action": [
                "s3:ListBucket",
                "s3:GetBucketLocation",
                "s3:GetBucketObjectLockConfiguration",
                "s3:GetBucketVersioning",
            ],
            "Resource": f"arn:aws:s3:::{bucket}",
        },
    ]
    if role == "restore":
        statements.append(
            {
                "Sid": "ReadObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": objects,
            }
        )
        # a restore still takes (and releases) a shared lock
        statements.append(
            {
                "Sid": "Locks",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject"],
                "Resource": locks,
            }
        )
    else:
        statements.append(
            {
                "Sid": "ReadAndAddObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject"],
                "Resource": objects,
            }
        )
        statements.append(
            {
                "Sid": "DeleteLocks" if role == "backup" else "DeleteObjects",
                "Effect": "Allow",
                "Action": ["s3:DeleteObject"],
                "Resource": locks if role == "backup" else objects,
            }
        )
    statements.append(
        {
            "Sid": "NeverDestroyVersions",
            "Effect": "Deny",
            "Action": [
                "s3:DeleteObjectVersion",
                "s3:PutObjectRetention",
                "s3:PutObjectLegalHold",
                "s3:BypassGovernanceRetention",
                "s3:PutBucketObjectLockConfiguration",
                "s3:PutBucketVersioning",
                "s3:PutLifecycleConfiguration",
                "s3:PutBucketPolicy",
                "s3:DeleteBucket",
            ],
            "Resource": [f"arn:aws:s3:::{bucket}", objects],
        }
    )
    return {"Version": "2012-10-17", "Statement": statements}


@dataclass
class _Version:
    key: str
    version_id: str
    time: datetime
    etag: str | None  # None: a delete marker
    latest: bool


def _versions(b: _Bucket) -> Iterator[_Version]:
    token: dict[str, str] = {}
    while True:
        page = b.call("list_object_versions", Prefix=f"{b.prefix}/" if b.prefix else "", **token)
        for v in page.get("Versions") or []:
            yield _Version(
                v["Key"], v["VersionId"], v["LastModified"], v.get("ETag"), v["IsLatest"]
            )
        for m in page.get("DeleteMarkers") or []:
            yield _Version(m["Key"], m["VersionId"], m["LastModified"], None, m["IsLatest"])
        if not page.get("IsTruncated"):
            return
        token = {"KeyMarker": page["NextKeyMarker"]}
        if page.get("NextVersionIdMarker"):
            token["VersionIdMarker"] = page["NextVersionIdMarker"]


def repair(
    backend: Backend, *, undelete_since: datetime | None = None, dry_run: bool = False
) -> RepairReport:
    """Put back the genuine (oldest) version of every write-once object a later PUT replaced;
    with ``undelete_since``, also remove delete markers created at or after that time so the
    objects they hid reappear.  Each step is one S3 call and idempotent: an interrupted repair
    is finished by running it again.  Run ``vmkeep check --read-data`` afterwards."""
    b = _Bucket(backend)
    by_key: dict[str, list[_Version]] = defaultdict(list)
    for version in _versions(b):
        rel = b.rel(version.key)
        if rel in WRITE_ONCE_KEYS or rel.startswith(WRITE_ONCE_PREFIXES):
            by_key[version.key].append(version)
    report = RepairReport(examined=len(by_key), dry_run=dry_run)
    for key, versions in sorted(by_key.items()):
        versions.sort(key=lambda v: (v.time, not v.latest))
        data = [v for v in versions if v.etag is not None]
        if not data:
            continue
        genuine = data[0]
        latest = next((v for v in versions if v.latest), versions[-1])
        if latest.etag is None:
            if undelete_since is None or latest.time < undelete_since:
                continue  # deleted before the window (or no undelete asked): leave it
            markers = [v for v in versions if v.etag is None and v.time >= undelete_since]
            remaining = [v for v in versions if v not in markers]
            latest = remaining[-1]
            if latest.etag is None:
                continue  # an older delete marker would still hide it: deleted before the window
            report.undeleted.append(b.rel(key))
            if not dry_run:
                for marker in markers:
                    b.call("delete_object", Key=key, VersionId=marker.version_id)
            # what the markers hid may itself be a replacement: compared below
        if latest.etag != genuine.etag:
            report.restored.append(b.rel(key))
            if not dry_run:
                b.restore_version(key, genuine.version_id)
    return report
