"""The newcomer's first commands (#20 item 1), exactly as installed (``python -m vmkeep.cli``, no
test hooks), on a fresh state directory with no licence: they work, and ``license status`` shows
the community tier with what they used."""

from __future__ import annotations

import json
from pathlib import Path

from tests.security.licence_helpers import make_image, real_cli


def test_first_backups_work_without_a_licence(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("first backup\n")
    assert real_cli("init", VMKEEP_REPO=repo).returncode == 0
    files = real_cli("backup", "files", str(data), "--name", "data", "--json", VMKEEP_REPO=repo)
    assert files.returncode == 0, files.stderr
    image = real_cli("backup", "image", str(make_image(tmp_path / "disk.img", 7)), "--name",
                     "disk", "--json", VMKEEP_REPO=repo)
    assert image.returncode == 0, image.stderr
    status = real_cli("license", "status", "--json", VMKEEP_REPO=repo)
    st = json.loads(status.stdout)
    assert status.returncode == 0 and st["tier"] == "community" and st["compliant"]
    assert st["meters"][0] == {**st["meters"][0], "meter": "workloads", "used": 2,
                               "licensed": 10}
    text = real_cli("license", "status")
    assert text.returncode == 0 and "Tier: community" in text.stdout
