"""`nvramfs mkfs`, `fsck`, `info`: exit codes, one-line refusals, what they print."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nvramfs.cli import run
from nvramfs.image import Image
from nvramfs.units import parse_size


def nv(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    (s / "etc").mkdir(parents=True)
    (s / "etc" / "motd").write_bytes(b"hi\n")
    (s / "data").write_bytes(os.urandom(50_000))
    os.symlink("/etc/passwd", s / "out-link")  # points outside: stored, never followed
    os.mkfifo(s / "etc" / "fifo")
    return s


def test_mkfs_from_tree_then_fsck_and_info(tmp_path: Path, src: Path, capsys) -> None:
    img = tmp_path / "t.img"
    code, out, err = nv(capsys, "mkfs", str(img), "--from", str(src))
    assert code == 0 and "entries" in out
    assert "skipped etc/fifo (fifo)" in err
    with Image.open(img, readonly=True) as im:
        link = im.lookup(1, b"out-link")
        assert im.readlink(link) == b"/etc/passwd"
        assert im.getattr(im.lookup(1, b"data")).size == 50_000
    # default size: the need plus at least 64 MiB of room
    assert img.stat().st_size >= 64 << 20
    code, out, _ = nv(capsys, "fsck", str(img))
    assert code == 0 and "clean" in out
    code, out, _ = nv(capsys, "fsck", str(img), "--json")
    rep = json.loads(out)
    assert code == 0 and rep["clean"] and rep["errors"] == []
    code, out, _ = nv(capsys, "info", str(img), "--json")
    d = json.loads(out)
    assert code == 0 and d["block_size"] == 4096 and d["clean"] is True
    assert d["blocks_used"] + d["blocks_free"] == d["blocks"]
    assert d["inodes_used"] == 5 and "xattr" in d["features"]
    code, out, _ = nv(capsys, "info", str(img))
    assert code == 0 and "cleanly unmounted" in out


def test_mkfs_refusals_are_one_line(tmp_path: Path, src: Path, capsys) -> None:
    img = tmp_path / "t.img"
    img.write_bytes(b"x")
    code, _, err = nv(capsys, "mkfs", str(img), "--size", "8M")
    assert code == 1 and "already exists" in one_line(err)
    code, _, err = nv(capsys, "mkfs", str(tmp_path / "n.img"), "--from", str(tmp_path / "nope"))
    assert code == 1 and "no such directory" in one_line(err)
    code, _, err = nv(capsys, "mkfs", str(tmp_path / "n.img"), "--from", str(src), "--size", "64K")
    line = one_line(err)
    assert code == 1 and "too small" in line and "needs at least" in line
    code, _, err = nv(capsys, "mkfs", str(tmp_path / "n.img"), "--size", "lots")
    assert code == 2 and "bad size" in one_line(err)
    code, _, err = nv(capsys, "mkfs", str(tmp_path / "n.img"))
    assert code == 2 and "--size" in one_line(err)
    (src / ".nvramfs").mkdir()
    code, _, err = nv(capsys, "mkfs", str(tmp_path / "n.img"), "--from", str(src))
    assert code == 1 and "reserved" in one_line(err)
    assert not (tmp_path / "n.img").exists()
    assert not list(tmp_path.glob(".n.img.mkfs-*"))  # no temporary left behind


def test_mkfs_too_small_names_the_size_asked_and_a_minimum_that_works(
    tmp_path: Path, capsys
) -> None:
    img = str(tmp_path / "s.img")
    code, _, err = nv(capsys, "mkfs", img, "--size", "1K")
    line = one_line(err)
    assert code == 1 and "size 1.0 KiB too small" in line
    need = int(re.search(r"at least (\d+) bytes", line).group(1))
    code, _, err = nv(capsys, "mkfs", img, "--size", str(need - 4096))
    assert code == 1 and f"at least {need} bytes" in one_line(err)
    code, _, _ = nv(capsys, "mkfs", img, "--size", str(need))
    assert code == 0


def test_mkfs_force_overwrites(tmp_path: Path, capsys) -> None:
    img = tmp_path / "t.img"
    img.write_bytes(b"old")
    code, _, _ = nv(capsys, "mkfs", str(img), "--size", "4M", "--force")
    assert code == 0 and img.stat().st_size == 4 << 20


def test_parse_size() -> None:
    assert parse_size("16G") == 16 << 30
    assert parse_size("512M") == 512 << 20
    assert parse_size("512MiB") == 512 << 20
    assert parse_size("4096") == 4096
    assert parse_size("1.5k") == 1536


def test_fsck_exit_codes(tmp_path: Path, capsys) -> None:
    img = tmp_path / "t.img"
    assert nv(capsys, "mkfs", str(img), "--size", "4M")[0] == 0
    bad = tmp_path / "bad.img"
    shutil.copy(img, bad)
    with open(bad, "r+b") as f:  # both superblock copies: bad checksum
        for off in (40, 4096 + 40):
            f.seek(off)
            f.write(b"\xff")
    code, out, _ = nv(capsys, "fsck", str(bad))
    assert code == 4 and "superblock" in out
    code, out, _ = nv(capsys, "fsck", "--json", str(bad))
    assert code == 4 and json.loads(out)["errors"][0]["where"] == "image"
    junk = tmp_path / "junk"
    junk.write_bytes(b"\0" * 100_000)
    code, out, _ = nv(capsys, "fsck", str(junk))
    assert code == 8 and "not an nvramfs image" in out
    code, _, err = nv(capsys, "info", str(junk))
    assert code == 1 and "not an nvramfs image" in one_line(err)


def test_mkfs_recipe(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(
        json.dumps(
            {
                "seed": 3,
                "dirs": ["etc", "lib"],
                "groups": [
                    {"dir": "etc", "count": 5, "kind": "config", "size": [50, 500]},
                    {"dir": "lib", "count": 2, "kind": "elf", "size": [5000, 9000], "ext": ".so"},
                ],
                "symlinks": [["lib/libx.so", "lib-000.so"]],
                "hardlinks": [["etc/etc-000", "etc/again"]],
            }
        )
    )
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert nv(capsys, "mkfs", str(a), "--recipe", str(recipe), "--size", "8M")[0] == 0
    assert nv(capsys, "mkfs", str(b), "--recipe", str(recipe), "--size", "8M")[0] == 0
    with Image.open(a, readonly=True) as ia, Image.open(b, readonly=True) as ib:
        etc_a, etc_b = ia.lookup(1, b"etc"), ib.lookup(1, b"etc")
        assert [n for _, n, _ in ia.readdir(etc_a)] == [n for _, n, _ in ib.readdir(etc_b)]
        fa, fb = ia.lookup(etc_a, b"etc-003"), ib.lookup(etc_b, b"etc-003")
        ba, bb = ia.bmap(fa, 0, 1)[0], ib.bmap(fb, 0, 1)[0]
        assert bytes(ia.block_view(int(ba))) == bytes(ib.block_view(int(bb)))
        assert ia.getattr(fa).mtime_ns == ib.getattr(fb).mtime_ns
        assert ia.getattr(ia.lookup(etc_a, b"again")).nlink == 2
    code, _, err = nv(capsys, "mkfs", str(tmp_path / "c.img"), "--recipe", str(tmp_path / "no"))
    assert code == 1 and "no such recipe" in one_line(err)


def test_default_recipe_is_valid() -> None:
    from nvramfs.image.recipe import load

    spec = load(Path(__file__).parents[2] / "images" / "default.json")
    files = sum(g["count"] for g in spec["groups"])
    assert 300 <= files <= 700


def test_console_alias_fsck(tmp_path: Path) -> None:
    img = tmp_path / "t.img"
    assert run(["mkfs", str(img), "--size", "4M", "-q"]) == 0
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from nvramfs.cli import fsck_main; sys.argv[1:] = "
            f"[{str(img)!r}]; sys.exit(fsck_main())",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "clean" in out.stdout


def _damage_free_count(img: Path) -> None:
    """Superblock free_blocks off by 3 in both copies, checksums kept right (preen repairs it)."""
    import numpy as np

    from nvramfs.image import format as F

    data = bytearray(img.read_bytes()[: 2 * 4096])
    for c in (0, 1):
        sb = np.frombuffer(data, F.SB_DTYPE, count=1, offset=c * 4096).copy()
        sb[0]["free_blocks"] = int(sb[0]["free_blocks"]) - 3
        raw = bytearray(sb.tobytes())
        raw[-4:] = F.sb_crc(raw).to_bytes(4, "little")
        data[c * 4096 : c * 4096 + 512] = raw
    with open(img, "r+b") as f:
        f.write(bytes(data))


def test_fsck_modes_and_exit_codes(tmp_path: Path, capsys) -> None:
    img = tmp_path / "t.img"
    assert nv(capsys, "mkfs", str(img), "--size", "4M")[0] == 0
    for args in (["-n", "-y"], ["-p", "-y"], ["--bogus"], []):
        code, _, err = nv(capsys, "fsck", *args, *([str(img)] if args else []))
        assert code == 16, (args, err)  # e2fsck's usage error, not the CLI's 2
    code, out, _ = nv(capsys, "fsck", "-f", str(img))
    assert code == 0 and "clean" in out
    _damage_free_count(img)
    before = img.read_bytes()
    code, out, _ = nv(capsys, "fsck", str(img))  # -n is the default: report, write nothing
    assert code == 4 and "free_blocks" in out and img.read_bytes() == before
    code, out, _ = nv(capsys, "fsck", "-n", "-f", str(img))
    assert code == 4 and img.read_bytes() == before
    code, out, _ = nv(capsys, "fsck", "-a", str(img))  # -a is -p
    assert code == 1 and "fixed: block and inode bitmaps rebuilt" in out
    assert "IMAGE WAS MODIFIED" in out
    code, out, _ = nv(capsys, "fsck", "-y", "--json", str(img))
    rep = json.loads(out)
    assert code == 0 and rep["clean"] and rep["fixed"] == []
    _damage_free_count(img)
    code, out, _ = nv(capsys, "fsck", "--repair", "--json", str(img))
    rep = json.loads(out)
    assert code == 1 and rep["fixed"] and rep["remaining"] == []


def test_fsck_preen_stops_on_what_it_may_not_repair(tmp_path: Path, src: Path, capsys) -> None:
    img = tmp_path / "t.img"
    assert nv(capsys, "mkfs", str(img), "--from", str(src), "--size", "8M")[0] == 0
    with Image.open(img) as im:
        motd = im.lookup(im.lookup(1, b"etc"), b"motd")
    with Image.open(img) as im:  # a link count the tree does not have
        with im._transaction():
            im._winode(motd)["nlink"] = 3
    before = img.read_bytes()
    code, out, _ = nv(capsys, "fsck", "-p", str(img))
    assert code == 4 and "UNEXPECTED INCONSISTENCY; run fsck -y" in out
    assert img.read_bytes() == before
    code, out, _ = nv(capsys, "fsck", "-y", str(img))
    assert code == 1 and f"inode {motd}: link count set to 1" in out
    assert nv(capsys, "fsck", str(img))[0] == 0


def test_fsck_interrupted_is_32(tmp_path: Path, capsys, monkeypatch) -> None:
    import nvramfs.cli.fsck as cli_fsck

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_fsck, "fsck", interrupted)
    img = tmp_path / "t.img"
    assert nv(capsys, "mkfs", str(img), "--size", "4M")[0] == 0
    assert nv(capsys, "fsck", str(img))[0] == 32


def test_info_times_and_mount_count(tmp_path: Path, capsys) -> None:
    img = tmp_path / "t.img"
    code, out, _ = nv(capsys, "mkfs", str(img), "--size", "300M")
    made = int(out.split(" inodes")[0].rsplit(" ", 1)[1])
    code, out, _ = nv(capsys, "info", "--json", str(img))
    d = json.loads(out)
    assert d["inodes"] == made  # one definition: slots less the reserved slot 0
    assert d["mounts"] == 0 and d["last_mount"] is None and d["created"] > 0
    code, out, _ = nv(capsys, "info", str(img))
    assert "last mount:   n/a" in out and "mount count:  0" in out
    for _ in range(2):
        Image.open(img).close()  # what a read-write mount does
    code, out, _ = nv(capsys, "info", "--json", str(img))
    d2 = json.loads(out)
    assert d2["mounts"] == 2 and d2["last_mount"] >= d["created"]
    assert d2["last_write"] >= d2["last_mount"]
    code, out, _ = nv(capsys, "info", str(img))
    assert "mount count:  2" in out and "last write:" in out and "last mount:   n/a" not in out


def test_info_reports_the_dirty_summary_of_an_unclean_end(tmp_path: Path, capsys) -> None:
    img = tmp_path / "t.img"
    assert nv(capsys, "mkfs", str(img), "--size", "4M")[0] == 0
    im = Image.open(img)
    assert im.note_dirty({7: 3, 9: 12}, now=100.0)
    assert not im.note_dirty({7: 3, 9: 12}, now=102.0)  # unchanged: not written
    assert not im.note_dirty({7: 4}, now=100.5)  # within a second of the last write
    im.close(clean=False)  # the daemon died
    code, out, _ = nv(capsys, "info", "--json", str(img))
    lost = json.loads(out)["lost_dirty"]
    assert lost["pages"] == 15 and lost["files"] == 2
    assert lost["inodes"] == [{"ino": 9, "pages": 12}, {"ino": 7, "pages": 3}]
    code, out, _ = nv(capsys, "info", str(img))
    assert "15 pages of 2 files not written back" in out
    with Image.open(img) as im:  # the next mount knows, then starts a new summary
        assert im.lost_dirty is not None and im.lost_dirty.pages == 15
    code, out, _ = nv(capsys, "info", "--json", str(img))
    assert json.loads(out)["lost_dirty"] is None  # cleanly closed
