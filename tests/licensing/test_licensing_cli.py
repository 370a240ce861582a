"""``vmkeep license plan/install/show/status`` through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from tests.licensing.licensing_devkeys import licence_text
from vmkeep.cli.common import run_guarded
from vmkeep.cli.main import app, register_all

register_all()

SEED_2 = {
    "esx_hosts": [
        {"name": "esx1", "guests": [{"name": f"vm{i}", "client": True} for i in range(6)]},
        {"name": "esx2", "guests": [{"name": f"vm{i}", "client": True} for i in range(6, 11)]},
    ]
}


def vmkeep(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_guarded(lambda: app(list(args), standalone_mode=False, prog_name="vmkeep"))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def test_plan_json_and_table(capsys, tmp_path: Path) -> None:
    env = write(tmp_path / "env.json", SEED_2)
    code, out, _ = vmkeep(capsys, "license", "plan", str(env), "--json")
    assert code == 0
    assert json.loads(out) == {
        "backup_client": 11,
        "esx_server_client_5seat": 2,
        "esx_5seat_addon": 1,
        "san_remote_device": 0,
        "autoloader_slot": 0,
    }
    code, out, _ = vmkeep(capsys, "license", "plan", str(env))
    assert code == 0
    assert "ESX 5 Seat Add-on" in out and "11 distinct image-protected guest(s)" in out


def test_plan_from_inventory_and_catalog(capsys, tmp_path: Path) -> None:
    inv = write(
        tmp_path / "inv.json",
        {
            "hosts": [
                {"name": "esx1", "vms": [{"name": f"v{i}", "uuid": f"u{i}"} for i in range(7)]}
            ]
        },
    )
    cat = write(
        tmp_path / "catalog.json",
        [{"kind": "files", "machine": "fileserver", "time": "2099-01-01T00:00:00+00:00"}],
    )
    code, out, err = vmkeep(
        capsys,
        "license",
        "plan",
        "--inventory",
        str(inv),
        "--client",
        "v1",
        "--remote-devices",
        "1",
        "--tape-library",
        "lib:24",
        "--catalog",
        str(cat),
        "--json",
    )
    assert code == 0, err
    assert json.loads(out) == {
        "backup_client": 2,
        "esx_server_client_5seat": 1,
        "esx_5seat_addon": 1,
        "san_remote_device": 1,
        "autoloader_slot": 24,
    }


def test_plan_errors(capsys, tmp_path: Path) -> None:
    code, _, err = vmkeep(capsys, "license", "plan")
    assert code == 14 and "exactly one" in err
    bad = write(tmp_path / "bad.json", {"esx_hosts": [{"name": "e", "guest": []}]})
    code, _, err = vmkeep(capsys, "license", "plan", str(bad))
    assert code == 14 and "unknown key(s) guest" in err
    (tmp_path / "notjson.json").write_text("{")
    code, _, err = vmkeep(capsys, "license", "plan", str(tmp_path / "notjson.json"))
    assert code == 14 and "not valid JSON" in err
    catalog = write(tmp_path / "catalog.json", [])
    env = write(tmp_path / "env.json", SEED_2)
    for args in (["plan", str(env), "--catalog", str(catalog)], ["report"]):
        # a window no date can hold (was OverflowError: a traceback)
        code, _, err = vmkeep(capsys, "license", *args, "--window-days", "99999999999")
        assert code == 2 and "less than or equal to 36500" in err and "Traceback" not in err


def test_install_show_status(capsys, dev_env: Path, tmp_path: Path) -> None:
    code, out, err = vmkeep(capsys, "license", "status", "--json")
    assert code == 0  # no licence: the community tier, nothing used yet
    assert json.loads(out)["tier"] == "community" and json.loads(out)["problem"] is None
    code, out, _ = vmkeep(capsys, "license", "status")
    assert code == 0 and "Tier: community" in out
    code, _, err = vmkeep(capsys, "license", "show")
    assert code == 17 and "No licence installed" in err

    lic = tmp_path / "lic.json"
    lic.write_text(licence_text(customer="ACME", esx_server_client_5seat=2, backup_client=11))
    code, _, err = vmkeep(capsys, "license", "install", str(lic))
    assert code == 0 and "installed licence" in err and str(dev_env) in err
    code, out, _ = vmkeep(capsys, "license", "show", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["licence"]["customer"] == "ACME" and shown["valid"] is True
    code, out, _ = vmkeep(capsys, "license", "show")
    assert "ACME" in out and "Backup Client (BC)" in out

    catalog = write(
        tmp_path / "cat.json",
        {
            "items": [
                {
                    "kind": "vm",
                    "machine": f"v{i}",
                    "host": "esx1",
                    "time": "2099-01-01T00:00:00+00:00",
                }
                for i in range(11)
            ]
        },
    )
    code, out, _ = vmkeep(capsys, "license", "status", "--catalog", str(catalog), "--json")
    st = json.loads(out)
    assert code == 17 and st["compliant"] is False
    assert st["shortfall"] == {"esx_5seat_addon": 1}
    assert st["skus"]["esx_server_client_5seat"] == {
        "title": "ESX Server Client (5 seat)",
        "used": 1,
        "licensed": 2,
    }
    code, out, _ = vmkeep(capsys, "license", "status", "--catalog", str(catalog))
    assert "OVER" in out and "Missing: 1× ESX 5 Seat Add-on" in out
    code, out, _ = vmkeep(capsys, "license", "status")
    assert code == 0 and "Tier: licensed" in out and "ledger" in out


def test_install_rejects_tampered_expired_wrong_key(
    capsys, dev_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = json.loads(licence_text(backup_client=1))
    d["payload"]["counts"]["backup_client"] = 1000
    tampered = write(tmp_path / "t.json", d)
    code, _, err = vmkeep(capsys, "license", "install", str(tampered))
    assert code == 17 and "modified or is corrupt" in err
    expired = tmp_path / "e.json"
    expired.write_text(licence_text(issued=date(2000, 1, 1), expires=date(2001, 1, 1)))
    code, _, err = vmkeep(capsys, "license", "install", str(expired))
    assert code == 17 and "expired on 2001-01-01" in err
    good = tmp_path / "g.json"
    good.write_text(licence_text())
    code, _, err = vmkeep(capsys, "license", "install", str(good), "--pubkey", "x.pem")
    assert code != 0 and "--pubkey" in err  # no such option any more
    monkeypatch.undo()  # back to the built-in vendor key
    monkeypatch.setenv("VMKEEP_CONFIG_DIR", str(dev_env))
    code, _, err = vmkeep(capsys, "license", "install", str(good))
    assert code == 17 and "signed by key 3b06bad2ade82a24" in err
    assert not (dev_env / "license.json").exists()


def test_console_script_subprocess(tmp_path: Path) -> None:
    env = write(
        tmp_path / "env.json",
        {
            "esx_hosts": [
                {"name": "esx1", "guests": [{"name": f"vm{i}", "client": True} for i in range(4)]}
            ]
        },
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vmkeep.cli.main import main; main()",
            "license",
            "plan",
            str(env),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backup_client"] == 4


def test_plan_from_vcenter_uses_the_vsphere_inventory(capsys, monkeypatch) -> None:
    import contextlib
    from types import SimpleNamespace

    import vmkeep.vsphere.connection as conn
    import vmkeep.vsphere.credentials as creds
    import vmkeep.vsphere.inventory as inv

    seen: dict[str, object] = {}

    def fake_connect(endpoint, credentials, tls):
        seen["endpoint"], seen["tls"] = endpoint, tls
        return contextlib.nullcontext("session")

    vms = [
        SimpleNamespace(name=f"v{i}", instance_uuid=f"u{i}", host=f"esx{i % 2}", template=False)
        for i in range(11)
    ] + [SimpleNamespace(name="tmpl", instance_uuid="t", host="esx0", template=True)]
    monkeypatch.setattr(conn, "connect", fake_connect)
    monkeypatch.setattr(creds, "from_env", lambda: "creds")
    monkeypatch.setattr(inv, "list_vms", lambda session: vms)
    code, out, err = vmkeep(
        capsys,
        "license",
        "plan",
        "--vcenter",
        "vc.lab",
        "--thumbprint",
        "ab" * 32,
        "--client",
        "v0",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out) == {
        "backup_client": 1,
        "esx_server_client_5seat": 2,
        "esx_5seat_addon": 1,
        "san_remote_device": 0,
        "autoloader_slot": 0,
    }
    assert seen["endpoint"] == "vc.lab"


def test_report_runs_the_licence_report_job(
    capsys, dev_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``license report`` is the ``licence-report`` job, in-process without a Prefect API: it
    counts the repositories' points and never refuses (exit 0 even when over the tier)."""
    from tests.storage.storage_helpers import backup, write_image
    from vmkeep.storage.repository import Repository

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    repo = Repository.init(str(tmp_path / "repo"))
    for i in range(11):  # one over the community tier's ten workloads
        backup(repo, write_image(tmp_path / f"d{i}.img", size=64 * 1024, seed=i), name=f"img{i}")
    code, out, err = vmkeep(capsys, "license", "report", "--repo", str(tmp_path / "repo"),
                            "--json", "--no-prefect")
    assert code == 0, err
    report = json.loads(out)
    assert report["tier"] == "community" and report["compliant"] is False
    assert report["meters"][0]["used"] == 11
    code, out, _ = vmkeep(capsys, "license", "report", "--repo", str(tmp_path / "repo"),
                          "--no-prefect")
    assert code == 0 and "NOT compliant" in out and "11 of 10" in out
