"""Immutable repositories on S3 Object Lock, against moto's S3 server with IAM enforcement.

The server starts open (to create the bucket, the users and their policies — the policies are
exactly what ``vmkeep object-lock policy`` prints), then enforces IAM on every request.  The CLI
runs in subprocesses with each user's credentials in the environment, as an administrator would
run it: backup credentials back up and restore but cannot forget, prune or destroy anything;
prune credentials can forget and prune, which only hides data behind delete markers; objects a
backup credential overwrote are put back by ``object-lock repair``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.servers.server_common import free_port, need, stop, wait_port

#: One bucket per test: moto (unlike AWS) sets a bucket's default retention only while it is empty.
BUCKETS = ("vmkeep-locked-1", "vmkeep-locked-2")
BUCKET = BUCKETS[0]
VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]


@dataclass
class LockedS3:
    endpoint: str
    creds: dict[str, tuple[str, str]]  # user -> (access key, secret)

    def env(self, user: str) -> dict[str, str]:
        key, secret = self.creds[user]
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, user: str) -> Any:
        import boto3

        key, secret = self.creds[user]
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )


def _policy(bucket: str, role: str) -> dict[str, Any]:
    out = subprocess.run(
        [*VMKEEP, "object-lock", "policy", "--role", role, "--repo", f"s3://{bucket}/repo"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(out))


@pytest.fixture(scope="module")
def locked_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedS3]:
    import boto3

    moto = need(str(Path(sys.executable).parent / "moto_server"), "moto[server] (dev dependency)")
    tmp = tmp_path_factory.mktemp("moto-iam")
    port = free_port()
    log = tmp / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out)
    try:
        wait_port(port, proc, log)
        endpoint = f"http://127.0.0.1:{port}"
        open_creds = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        open_creds |= {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        for bucket in BUCKETS:
            boto3.client("s3", **open_creds).create_bucket(
                Bucket=bucket, ObjectLockEnabledForBucket=True
            )
        iam = boto3.client("iam", **open_creds)
        admin_policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        creds = {}
        for user in ("admin", "backup", "prune"):
            iam.create_user(UserName=user)
            documents = [admin_policy] if user == "admin" else [_policy(b, user) for b in BUCKETS]
            for n, document in enumerate(documents):
                name = f"{user}-{n}"
                arn = iam.create_policy(PolicyName=name, PolicyDocument=json.dumps(document))
                iam.attach_user_policy(UserName=user, PolicyArn=arn["Policy"]["Arn"])
            key = iam.create_access_key(UserName=user)["AccessKey"]
            creds[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(request, timeout=10).read()  # from now on IAM is enforced
        yield LockedS3(endpoint, creds)
    finally:
        stop(proc)


def run(s3: LockedS3, user: str, *args: str, repo: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=repo, **s3.env(user))
    for name in ("AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        env.pop(name, None)
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=env, timeout=300)


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout)) if result.stdout.strip() else {}


def image(path: Path, seed: int) -> Path:
    data = bytearray(hashlib.sha256(str(seed).encode()).digest() * (3 * 1024 * 1024 // 32))
    data[100_000:400_000] = os.urandom(300_000)
    path.write_bytes(bytes(data))
    return path


def test_policy_roles_differ_only_in_deletes() -> None:
    from vmkeep.storage.object_lock import iam_policy

    backup = iam_policy(BUCKET, "repo", "backup")
    prune = iam_policy(BUCKET, "repo", "prune")
    deletes = {
        s["Sid"]: s["Resource"]
        for p in (backup, prune)
        for s in p["Statement"]
        if s["Effect"] == "Allow" and "s3:DeleteObject" in s["Action"]
    }
    assert deletes == {
        "DeleteLocks": f"arn:aws:s3:::{BUCKET}/repo/locks/*",
        "DeleteObjects": f"arn:aws:s3:::{BUCKET}/repo/*",
    }
    for policy in (backup, prune):
        denied = next(s for s in policy["Statement"] if s["Effect"] == "Deny")["Action"]
        assert {"s3:DeleteObjectVersion", "s3:BypassGovernanceRetention"} <= set(denied)


def test_enable_refuses_non_s3(tmp_path: Path) -> None:
    result = subprocess.run(
        [*VMKEEP, "object-lock", "enable", "--days", "7", "--repo", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "S3" in result.stderr
    assert "Traceback" not in result.stderr


def test_backup_credentials_add_but_never_destroy(locked_s3: LockedS3, tmp_path: Path) -> None:
    s3 = locked_s3
    repo = f"s3://{BUCKETS[0]}/repo"
    # lock the (empty) bucket first, so even the config and key files are immutable
    status = ok(run(s3, "admin", "object-lock", "enable", "--days", "3", "--json", repo=repo))
    ok(run(s3, "admin", "init", "--chunk-size", "64", repo=repo))
    assert status["immutable"] and status["mode"] == "COMPLIANCE" and status["days"] == 3
    assert status["lifecycle_rule"] and status["versioning"] == "Enabled"

    # backups (and their lock release) work with the append-only credentials
    img = image(tmp_path / "disk.img", 1)
    first = ok(run(s3, "backup", "backup", "image", str(img), "--name", "vm", "--json", repo=repo))
    with open(img, "r+b") as f:
        f.seek(1_000_000)
        f.write(os.urandom(200_000))
    second = ok(run(s3, "backup", "backup", "image", str(img), "--name", "vm", "--json", repo=repo))
    assert second["bytes_new"] < first["bytes_new"]
    points = ok(run(s3, "backup", "list", "--json", repo=repo))
    assert len(points["points"]) == 2
    locks = s3.client("admin").list_objects_v2(Bucket=BUCKET, Prefix="repo/")
    assert not [o["Key"] for o in locks.get("Contents", []) if "/locks/" in o["Key"]]

    # forget is refused to them, cleanly and without losing anything
    forget = run(s3, "backup", "forget", first["id"], repo=repo)
    assert forget.returncode == 15 and "ermission denied" in forget.stderr
    assert "Traceback" not in forget.stderr
    assert len(ok(run(s3, "backup", "list", "--json", repo=repo))["points"]) == 2

    # the store itself refuses deletes outside locks/ to the backup user ...
    client = s3.client("backup")
    prefix = "repo"
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/packs/")["Contents"]
    pack = listing[0]["Key"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=BUCKET, Key=pack)
    # ... and locked versions to everybody, the admin included
    admin = s3.client("admin")
    version = admin.list_object_versions(Bucket=BUCKET, Prefix=pack)["Versions"][0]["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        admin.delete_object(Bucket=BUCKET, Key=pack, VersionId=version)

    # an overwrite (allowed: PutObject) is found by check and undone by repair
    client.put_object(Bucket=BUCKET, Key=pack, Body=b"ransom note")
    damaged = run(s3, "backup", "check", "--read-data", repo=repo)
    assert damaged.returncode == 13
    # the short object reads as truncated at once (S3's 416 was retried, 4 times a read), and
    # the reader lease goes back before the exit (at the exit S3's client refused to send)
    assert "retry" not in damaged.stderr, damaged.stderr
    left = s3.client("admin").list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/locks/")
    assert not left.get("Contents"), left.get("Contents")
    dry = ok(run(s3, "admin", "object-lock", "repair", "--dry-run", "--json", repo=repo))
    assert dry["restored"] == [pack[len(prefix) + 1 :]] and dry["dry_run"]
    fixed = ok(run(s3, "admin", "object-lock", "repair", "--json", repo=repo))
    assert fixed["restored"] == dry["restored"]
    ok(run(s3, "backup", "check", "--read-data", repo=repo))
    out = tmp_path / "restored.img"
    restore = ["restore", "image", second["id"], "--to", str(out)]
    ok(run(s3, "backup", *restore, repo=repo))
    assert out.read_bytes() == img.read_bytes()


def test_prune_credentials_only_hide_data(locked_s3: LockedS3, tmp_path: Path) -> None:
    s3 = locked_s3
    bucket, prefix = BUCKETS[1], "repo"
    repo = f"s3://{bucket}/{prefix}"
    ok(run(s3, "admin", "object-lock", "enable", "--days", "3", "--json", repo=repo))
    ok(run(s3, "admin", "init", "--chunk-size", "64", repo=repo))
    img = image(tmp_path / "disk.img", 2)
    before = datetime.now(UTC)
    first = ok(run(s3, "backup", "backup", "image", str(img), "--name", "vm", "--json", repo=repo))
    img.write_bytes(os.urandom(len(img.read_bytes())))
    ok(run(s3, "backup", "backup", "image", str(img), "--name", "vm", "--json", repo=repo))

    # the prune credentials forget and prune (the store keeps the locked versions) ...
    ok(run(s3, "prune", "forget", first["id"], repo=repo))
    pruned = ok(run(s3, "prune", "prune", "--grace", "0s", "--json", repo=repo))
    assert pruned["packs_deleted"] >= 1
    admin = s3.client("admin")
    versions = admin.list_object_versions(Bucket=bucket, Prefix=f"{prefix}/")
    markers = {m["Key"] for m in versions.get("DeleteMarkers", [])}
    assert f"{prefix}/manifests/{first['id']}.parquet" in markers
    assert any("/packs/" in k for k in markers)

    # ... so the forgotten point can be brought back: undelete what was hidden since `before`
    undo = ok(
        run(
            s3,
            "admin",
            "object-lock",
            "repair",
            "--undelete-since",
            before.isoformat(),
            "--json",
            repo=repo,
        )
    )
    assert f"manifests/{first['id']}.parquet" in undo["undeleted"]
    assert not [k for k in undo["undeleted"] if k.startswith("locks/")]
    listed = ok(run(s3, "backup", "list", "--json", repo=repo))
    assert first["id"] in {p["id"] for p in listed["points"]}
    ok(run(s3, "backup", "check", "--read-data", repo=repo))
    out = tmp_path / "first.img"
    ok(run(s3, "backup", "restore", "image", first["id"], "--to", str(out), repo=repo))
    assert (
        hashlib.sha256(out.read_bytes()).hexdigest() != hashlib.sha256(img.read_bytes()).hexdigest()
    )


def test_enable_needs_a_lockable_bucket(locked_s3: LockedS3) -> None:
    admin = locked_s3.client("admin")
    admin.create_bucket(Bucket="vmkeep-plain")
    result = run(
        locked_s3, "admin", "object-lock", "enable", "--days", "3", repo="s3://vmkeep-plain/r"
    )
    assert result.returncode == 15 and "Object Lock" in result.stderr
    assert "Traceback" not in result.stderr
