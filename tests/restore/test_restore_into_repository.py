"""A restore must not write among the repository's own objects: ``restore files --to REPO/packs``
left temporary files in ``packs/`` that every reader then took for packs (a ``ValueError``
traceback naming no object), and ``restore files --to REPO`` littered its top.  Such targets
are refused (exit 15) before anything is written; a file someone put under ``packs/`` anyway is
no pack: readers leave it out and ``check`` names it."""

from __future__ import annotations

from pathlib import Path

from tests.restore.restore_helpers import run_cli, vmkeep_json


def test_restores_into_the_repository_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    point = vmkeep_json("backup", "files", str(src), "--name", "f", repo=repo)["id"][:8]
    image = tmp_path / "disk.img"
    image.write_bytes(b"\1" * (1 << 20))
    disk = vmkeep_json("backup", "image", str(image), "--name", "d", repo=repo)["id"][:8]
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    for command in (["restore", "files", f"{point}:/", "--to", str(repo / "packs")],
                    ["restore", "files", f"{point}:/", "--to", str(repo)],
                    ["restore", "files", f"{point}:/", "--to", str(repo / "new" / "deeper")],
                    ["restore", "image", disk, "--to", str(repo / "index" / "x.parquet")]):
        code, _out, err = run_cli(*command, repo=repo)
        assert code == 15 and "inside the repository" in err, (command, err)
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before

    (repo / "packs" / "a.txt").write_text("not a pack")
    code, out, err = run_cli("ls", f"{point}:/", repo=repo)
    assert code == 0 and "a.txt" in out, err
    checked = vmkeep_json("check", repo=repo)
    assert checked["ok"] and checked["warnings"] == ["packs/a.txt is not a pack (no pack has such "
                                                     "a name): left alone"]
