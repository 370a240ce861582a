"""Cut points of image frames (repository version 3: the chunker starts ``lookback`` bytes before
the frame): they are the stream's content-defined cuts inside the frame, so the same data at
another offset is cut alike; version-2 repositories keep cutting from the frame edge; a CBT
incremental reads the changed frames and their lookbacks, nothing else."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha
from tests.storage.test_image_cdc import FRAME, _recipe_locations, files_blob, guest_image
from vmkeep.storage.cdc import Chunker
from vmkeep.storage.cdc_frames import frame_cuts
from vmkeep.storage.codec import decode_recipe
from vmkeep.storage.disk_backup import backup_disk
from vmkeep.storage.pack import pack_key
from vmkeep.storage.repository import Repository

CDC = {"min": 1024, "avg": 4096, "max": 16384}


def _stream_cuts(data: bytes) -> list[int]:
    cuts, pos = [], 0
    for piece in Chunker(1024, 4096, 16384).cut(data):
        pos += piece.nbytes
        cuts.append(pos)
    return cuts[:-1]


def test_with_a_lookback_the_cuts_inside_a_frame_are_the_streams() -> None:
    data = files_blob(31, 8 * FRAME)
    stream = _stream_cuts(data)
    chunker = Chunker(1024, 4096, 16384)
    resynced = 0
    for k in range(1, 8):
        start = k * FRAME
        frame = data[start : start + FRAME]
        inside = [c - start for c in stream if start < c < start + FRAME]
        cuts = frame_cuts(chunker, frame, data[start - 4 * 4096 : start])
        resynced += cuts == inside
        assert cuts[1:] == inside[1:] or cuts == inside  # at most the first cut differs
        naive = [c - 4 * 4096 for c in _stream_cuts(data[start - 4 * 4096 : start + FRAME])]
        assert cuts == [c for c in naive if 0 < c < FRAME]  # as if cut whole, without the copy
        plain = frame_cuts(chunker, frame)  # no lookback: the chain starts at the edge
        assert plain == [c - 0 for c in _stream_cuts(frame)]
    assert resynced >= 6


def _data(rng: random.Random, kind: str, n: int) -> bytes:
    if kind == "random":
        return rng.randbytes(n)
    if kind == "zeros":  # no content cut: the chain cuts at ``max``
        return bytes(n)
    if kind == "runs":  # long runs: pieces far longer than ``2 × avg`` after the edge
        runs = (bytes([rng.randrange(3)]) * rng.randrange(1, 6000) for _ in range(n // 50 + 2))
        return b"".join(runs)[:n]
    return bytes(rng.choice(b"abcdef \n") for _ in range(n))


@pytest.mark.parametrize("kind", ["random", "zeros", "runs", "text"])
def test_frame_cuts_are_the_cuts_of_the_lookback_and_frame_cut_whole(kind: str) -> None:
    """Whatever the data, the lookback's length (shorter or longer than ``min`` / ``avg``) and
    the frame's (shorter than ``max``): the cuts are those of ``before + frame`` cut as one
    buffer — the chain run over ``before`` alone and the partial copies change nothing."""
    rng = random.Random(kind)
    chunker = Chunker(1024, 4096, 16384)
    for _ in range(150):
        lead = rng.choice([1, 500, 1023, 1024, 1025, 4095, 4097, 8193, 16384, 20000])
        size = rng.choice([1, 1000, 1025, 8192, 8193, 16385, 20000, 70000])
        before, frame = _data(rng, kind, lead), _data(rng, kind, size)
        head_cuts = _stream_cuts(before + frame[: 16384 + 1])  # without the buffer's end
        first = next((c - lead for c in head_cuts if lead < c < lead + size), None)
        rest = [] if first is None else [first + c for c in _stream_cuts(frame[first:])]
        expected = [] if first is None else [first, *rest]
        assert frame_cuts(chunker, frame, before) == expected


def _recipe_cuts(repo: Repository, point_id: str) -> list[list[int]]:
    out = []
    for _frame, loc in _recipe_locations(repo, point_id):
        pack = (Path(repo.backend.location) / pack_key(loc.pack_id)).read_bytes()  # type: ignore[attr-defined]
        payload = pack[loc.offset : loc.offset + loc.stored_length]  # type: ignore[attr-defined]
        lengths = [n for _id, n in decode_recipe(payload, FRAME, "t")]
        out.append([sum(lengths[: i + 1]) for i in range(len(lengths) - 1)])
    return out


def test_version_2_repositories_keep_cutting_from_the_frame_edge(tmp_path: Path) -> None:
    body = files_blob(32, 4 * FRAME)
    img = guest_image(tmp_path / "a.img", 0, body)
    data = img.read_bytes()
    expected = {
        3: [
            frame_cuts(Chunker(1024, 4096, 16384), data[o : o + FRAME], data[max(0, o - 4096) : o])
            for o in range(0, len(data), FRAME)
        ],
        2: [
            frame_cuts(Chunker(1024, 4096, 16384), data[o : o + FRAME])
            for o in range(0, len(data), FRAME)
        ],
    }
    assert expected[2] != expected[3]
    for version, lookback in ((2, 0), (3, 4096), (4, 4096)):  # 4 cuts like 3 (units)
        repo = Repository.init(
            str(tmp_path / f"repo{version}"),
            image_chunk_size=FRAME,
            image_cdc={**CDC, "lookback": lookback},
            version=version,
        )
        assert repo.config.version == version
        point, _ = backup(repo, img)
        assert sorted(_recipe_cuts(repo, point.id)) == sorted(expected[min(version, 3)])
        assert restored_sha(repo, point.id, tmp_path) == sha(img)


class CountingSource:
    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        self.reads: list[tuple[int, int]] = []

    def pread(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]


def test_a_cbt_incremental_reads_the_changed_frames_and_no_lookback_outside_the_plan(
    tmp_path: Path,
) -> None:
    """The lookback reads only what the plan reads: a changed frame whose neighbour is not in
    the plan is cut from its edge (an NFC export streams only planned areas)."""
    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=FRAME)
    lookback = repo.config.image_cdc["lookback"]  # type: ignore[index]
    img = guest_image(tmp_path / "a.img", 0, files_blob(33, 6 * FRAME))
    first, _ = backup(repo, img, name="a")
    data = bytearray(img.read_bytes())
    data[3 * FRAME + 100 : 3 * FRAME + 200] = random.Random(4).randbytes(100)
    img.write_bytes(bytes(data))
    source = CountingSource(img)
    parent = repo.load_point(first.id).chunks[0]
    result = backup_disk(
        repo,
        source,
        len(data),
        parent=parent,
        changed=[(3 * FRAME + 100, 100)],
        reason="test",
    )
    assert sorted(source.reads) == [(3 * FRAME, FRAME)]
    assert result.stats.chunks_new == 1
    assert result.stats.bytes_read == FRAME and result.stats.bytes_lookback == 0
    # two neighbouring changed frames: the second looks back into the first (planned) one
    data[4 * FRAME + 100 : 4 * FRAME + 200] = random.Random(5).randbytes(100)
    img.write_bytes(bytes(data))
    source = CountingSource(img)
    result = backup_disk(
        repo,
        source,
        len(data),
        parent=parent,
        changed=[(3 * FRAME + 100, 100), (4 * FRAME + 100, 100)],
        reason="test",
    )
    assert sorted(source.reads) == [
        (3 * FRAME, FRAME), (4 * FRAME - lookback, lookback), (4 * FRAME, FRAME)
    ]
    assert result.stats.bytes_lookback == lookback
