"""No credential reaches Prefect (#24 item 1): canary passwords through the real CLI and flows.

A Prefect server of this module's own (so its SQLite database holds only these runs) runs the
flows that the CLI starts with ``--prefect``; every credential vmkeep handles is a canary:

* the repository password (``VMKEEP_PASSWORD``, encrypted repository; ``VMKEEP_FROM_PASSWORD``
  when ``copy`` reads it);
* file-source passwords (``VMKEEP_SOURCE_PASSWORD``) for ``sftp://`` and ``smb://`` sources;
* target credentials: an SMB repository (``FSSPEC_SMB``) and an S3 repository
  (``AWS_SECRET_ACCESS_KEY``);
* vCenter (``VMKEEP_VC_PASSWORD``, and a Prefect Secret block through ``--password-block``) and
  guest credentials (``VMKEEP_GUEST_PASSWORD``) against the ESX lab.

Afterwards the Prefect API (flow runs with their parameters, task runs, logs, artifacts,
variables, deployments, block documents as served, events) and every file of the server's home
(``prefect.db`` and its WAL) are searched for each canary.  Before #24 the source password was a
flow-run parameter (``source_options``) and this test found it in both.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers.s3_server import S3Server
from tests.servers.smbd_server import SmbServer
from tests.servers.sshd_server import SftpServer
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.deployments import prefect_server as ps

DEV_KEYS = Path(__file__).resolve().parents[1] / "licensing" / "keys"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def canary(what: str) -> str:
    return f"CANARY-{what}-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("prefect-canary-home")
    srv = ps.start(home)
    try:
        yield {"api": srv.api_url, "home": home}
    finally:
        srv.stop()


def cli(
    server: dict[str, Any], *args: str, ok: tuple[int, ...] = (0,), **env: str
) -> dict[str, Any]:
    """``vmkeep ARGS --json`` in a subprocess whose flows run on ``server``."""
    full = dict(os.environ, PREFECT_API_URL=server["api"], **env)
    full.setdefault("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
    proc = subprocess.run(  # the test-only launcher: it trusts the development licence key
        [*VMKEEP, *args, "--json"],
        capture_output=True,
        text=True,
        env=cli_env(full),
    )
    assert proc.returncode in ok, (args, proc.returncode, proc.stderr[-3000:])
    for value in env.values():
        if value.startswith("CANARY-"):
            assert value not in proc.stdout + proc.stderr, args
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def api_dump(api: str) -> str:
    """Everything the Prefect API serves about runs, as text."""
    parts: list[str] = []
    with httpx.Client(base_url=api, timeout=60) as client:
        for path in ("/flow_runs/filter", "/task_runs/filter", "/logs/filter",
                     "/artifacts/filter", "/variables/filter", "/deployments/filter",
                     "/block_documents/filter", "/flows/filter"):
            offset = 0
            while True:
                r = client.post(path, json={"limit": 200, "offset": offset})
                r.raise_for_status()
                page = r.json()
                parts.append(r.text)
                if len(page) < 200:
                    break
                offset += 200
        runs = client.post("/flow_runs/filter", json={"limit": 200}).json()
        for run in runs:
            parts.append(client.get(f"/flow_runs/{run['id']}").text)
        events = client.post("/events/filter", json={"limit": 50})
        events.raise_for_status()
        if events.status_code == 200:
            parts.append(events.text)
            page = events.json()
            while page.get("next_page"):
                nxt = client.get(page["next_page"])
                if nxt.status_code != 200:
                    break
                parts.append(nxt.text)
                page = nxt.json()
    return "\n".join(parts)


def settled(api: str, expected_runs: int) -> None:
    """Wait (bounded, generous) until the server has recorded every run as finished."""
    deadline = time.monotonic() + 180
    while True:
        runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=60).json()
        done = [r for r in runs if r["state_type"] in TERMINAL]
        if len(done) >= expected_runs and len(done) == len(runs):
            return
        assert time.monotonic() < deadline, [(r["name"], r["state_type"]) for r in runs]
        time.sleep(1)


#: a flow with one task, run after the CLI's runs: once its task run and its events are on the
#: server, so is everything the earlier runs sent (one pipeline, in order) — a state to wait for
SENTINEL = """
import sys
from prefect import flow, task

@task(name="vmkeep-sentinel-task")
def mark() -> None:
    pass

@flow(name="vmkeep-sentinel", flow_run_name=sys.argv[1])
def sentinel() -> None:
    mark()

sentinel()
"""


def sentinel_arrived(api: str) -> None:
    """Run :data:`SENTINEL` on the server at ``api`` and wait until its task run is recorded
    and its events are persisted: both come through the server's event pipeline after the
    earlier runs' events.  The deadline only stops a hang."""
    name = f"sentinel-{secrets.token_hex(4)}"
    subprocess.run([sys.executable, "-c", SENTINEL, name], check=True, capture_output=True,
                   env=dict(os.environ, PREFECT_API_URL=api), timeout=600)
    [run] = [r for r in httpx.post(f"{api}/flow_runs/filter", json={"limit": 200},
                                   timeout=60).json() if r["name"] == name]
    deadline = time.monotonic() + 300
    while True:
        tasks = httpx.post(f"{api}/task_runs/filter", timeout=60, json={
            "flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        done = [t for t in tasks if t["state_type"] == "COMPLETED"]
        events = httpx.post(f"{api}/events/filter", timeout=60, json={
            "filter": {"resource": {"id": [f"prefect.task-run.{t['id']}" for t in done]},
                       "event": {"name": ["prefect.task-run.Completed"]}},
            "limit": 1}).json()["events"] if done else []
        if events:
            return
        assert time.monotonic() < deadline, ("the sentinel's task run never arrived", tasks)
        time.sleep(1)


def assert_nowhere(server: dict[str, Any], canaries: dict[str, str], expected_runs: int) -> None:
    settled(server["api"], expected_runs)
    sentinel_arrived(server["api"])  # the last events of the runs are persisted by now
    dump = api_dump(server["api"])
    assert "flow_run" in dump or "parameters" in dump  # the API did answer with runs
    found = {what: value for what, value in canaries.items() if value in dump}
    assert not found, f"in the Prefect API: {found}"
    for path in Path(server["home"]).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            leaked = [what for what, value in canaries.items() if value.encode() in data]
            assert not leaked, f"{leaked} in {path}"


def flow_names(api: str) -> set[str]:
    runs = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=60).json()
    flows = httpx.post(f"{api}/flows/filter", json={"limit": 200}, timeout=60).json()
    by_id = {f["id"]: f["name"] for f in flows}
    return {by_id.get(r["flow_id"], "?") for r in runs}


def count_runs(api: str) -> int:
    return len(httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}, timeout=60).json())


def test_file_and_image_credentials_never_reach_prefect(
    server: dict[str, Any],
    tmp_path: Path,
    sftp_server: SftpServer,
    smb_server: SmbServer,
    s3_server: S3Server,
) -> None:
    canaries = {
        "repository": canary("repo"),
        "sftp-source": canary("sftp"),
        "s3-target": canary("s3"),
        "smb": smb_server.password,  # the share's password (source and target)
    }
    start_runs = count_runs(server["api"])
    # an encrypted local repository: backup and restore of files and of an image
    repo = str(tmp_path / "repo")
    env = {"VMKEEP_REPO": repo, "VMKEEP_PASSWORD": canaries["repository"]}
    cli(server, "init", "--encrypt", **env)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("hello\n")
    cli(server, "backup", "files", str(src), "--name", "local", "--prefect", **env)
    cli(server, "restore", "files", "local@latest:/", "--to", str(tmp_path / "o1"), "--prefect",
        **env)
    img = tmp_path / "disk.img"
    img.write_bytes(os.urandom(1 << 20))
    cli(server, "backup", "image", str(img), "--name", "img", "--prefect", **env)
    cli(server, "restore", "image", "img@latest", "--to", str(tmp_path / "o.raw"), "--prefect",
        **env)
    assert (tmp_path / "o.raw").read_bytes() == img.read_bytes()

    # an SFTP source with a password (the key logs in; the password must still not leak)
    guest = f"guest-{secrets.token_hex(4)}"
    (sftp_server.root / guest).mkdir(parents=True)
    (sftp_server.root / guest / "s.txt").write_text("sftp\n")
    cli(server, "backup", "files", sftp_server.url(guest), "--name", "sftp", "--prefect", **env,
        VMKEEP_SOURCE_PASSWORD=canaries["sftp-source"],
        VMKEEP_SOURCE_KEY_FILE=str(sftp_server.key_file))

    # an SMB source with a password
    share_dir = smb_server.root / guest
    share_dir.mkdir(parents=True)
    (share_dir / "w.txt").write_text("smb\n")
    smb_url = smb_server.url(guest).replace("smb://", f"smb://{smb_server.user}@")
    cli(server, "backup", "files", smb_url, "--name", "smb", "--prefect", **env,
        VMKEEP_SOURCE_PASSWORD=smb_server.password)

    # an SMB repository (target credentials in FSSPEC_SMB)
    smb_env = {
        "VMKEEP_REPO": smb_server.url(f"{guest}-repo"),
        "FSSPEC_SMB": json.dumps({"username": smb_server.user, "password": smb_server.password,
                                  "port": smb_server.port}),
    }
    cli(server, "init", **smb_env)
    cli(server, "backup", "image", str(img), "--name", "img", "--prefect", **smb_env)
    cli(server, "restore", "image", "img@latest", "--to", str(tmp_path / "smb.raw"),
        "--prefect", **smb_env)

    # an S3 repository (moto accepts any key; the secret is the canary)
    s3_env = {
        "VMKEEP_REPO": s3_server.url(f"{guest}-repo"),
        "AWS_ACCESS_KEY_ID": "AKIACANARYTEST",
        "AWS_SECRET_ACCESS_KEY": canaries["s3-target"],
        "FSSPEC_S3": json.dumps({"endpoint_url": f"http://127.0.0.1:{s3_server.port}",
                                 "skip_instance_cache": True}),
    }
    cli(server, "init", **s3_env)
    cli(server, "backup", "image", str(img), "--name", "img", "--prefect", **s3_env)
    cli(server, "restore", "image", "img@latest", "--to", str(tmp_path / "s3.raw"),
        "--prefect", **s3_env)
    assert (tmp_path / "s3.raw").read_bytes() == img.read_bytes()

    # an off-site copy of the encrypted repository into the S3 one (the source's password is
    # VMKEEP_FROM_PASSWORD; the S3 secret key is the destination's credential)
    copied = cli(server, "copy", "--from-repo", repo, "--prefect", **s3_env,
                 VMKEEP_FROM_PASSWORD=canaries["repository"])
    assert sorted(r["name"] for r in copied["copied"]) == ["img", "local", "sftp", "smb"]

    assert {"backup-files", "restore-files", "backup-image", "restore-image", "copy"} <= (
        flow_names(server["api"]))
    assert_nowhere(server, canaries, start_runs + 10)


@pytest.mark.lab
def test_vcenter_and_guest_credentials_never_reach_prefect(
    server: dict[str, Any], tmp_path: Path, esx_lab: Any
) -> None:
    canaries = {"vcenter": esx_lab.password, "guest": canary("guest")}
    start_runs = count_runs(server["api"])
    block = f"vmkeep-canary-{secrets.token_hex(3)}"
    subprocess.run(  # a Secret block, as `vmkeep serve` saves the vCenter password
        [sys.executable, "-c", "import sys; from prefect.blocks.system import Secret; "
         "Secret(value=sys.stdin.read()).save(sys.argv[1], overwrite=True)", block],
        input=esx_lab.password, text=True, check=True,
        env=dict(os.environ, PREFECT_API_URL=server["api"]),
    )
    repo = str(tmp_path / "repo")
    env = {"VMKEEP_REPO": repo, "VMKEEP_VC_USER": esx_lab.user,
           "VMKEEP_VC_PASSWORD": esx_lab.password, "VMKEEP_GUEST_USER": "root",
           "VMKEEP_GUEST_PASSWORD": canaries["guest"]}
    cli(server, "init", **env)
    vc = ["--vcenter", esx_lab.url, "--cafile", esx_lab.cafile]
    out = cli(server, "backup", "vm", "small06", *vc, "--no-quiesce", "--prefect", **env)
    point = out["id"][:12]
    no_env_password = {k: v for k, v in env.items() if k != "VMKEEP_VC_PASSWORD"}
    cli(server, "backup", "vm", "small06", *vc, "--no-quiesce", "--password-block", block,
        "--prefect", **no_env_password)
    cli(server, "restore", "files", f"{point}:p1/etc/hostname", "--to-guest",
        "linux01:/srv/vmkeep-canary", *vc, "--prefect", **env)
    assert {"backup-vm", "restore-files"} <= flow_names(server["api"])
    assert_nowhere(server, canaries, start_runs + 3)


def test_purge_removes_runs_that_stored_a_password(tmp_path: Path) -> None:
    """The documented purge: find the runs, delete them, compact the database — the secret an
    older vmkeep stored as a parameter is then gone from the API and from every file."""
    import sqlite3

    home = tmp_path / "home"
    home.mkdir()
    secret = canary("old")
    srv = ps.start(home)
    try:
        env = dict(os.environ, PREFECT_API_URL=srv.api_url)
        old_vmkeep = (  # what `vmkeep backup files` did before #24
            "import sys\nfrom prefect import flow\n"
            "@flow(name='backup-files')\ndef backup_files(source: str, source_options: dict):\n"
            "    return 1\n"
            "backup_files(source='sftp://u@guest/srv', source_options={'password': sys.argv[1]})\n"
        )
        subprocess.run([sys.executable, "-c", old_vmkeep, secret], env=env, check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-c", "from prefect import flow\n"
                        "flow(name='backup-image')(lambda repo: 1)(repo='/srv/r')"],
                       env=env, check=True, capture_output=True)
        purge = [sys.executable, "-m", "vmkeep.deployments.purge_secrets"]
        listed = subprocess.run(purge, env=env, check=True, capture_output=True, text=True)
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(r["flow"], r["keys"]) for r in rows] == [
            ("backup-files", ["source_options.password"])
        ]
        assert secret not in listed.stdout + listed.stderr
        subprocess.run([*purge, "--delete"], env=env, check=True, capture_output=True)
        runs = httpx.post(f"{srv.api_url}/flow_runs/filter", json={}, timeout=60).json()
        assert len(runs) == 1 and secret not in api_dump(srv.api_url)  # the other run stays
    finally:
        srv.stop()
    db = sqlite3.connect(home / "prefect.db")  # compact, as docs/security.md says
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    db.close()
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
