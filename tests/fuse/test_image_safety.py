"""Data safety around a real mount: the image lock, what a crash lost, repaired images.

mkfs --force and fsck's repairs refuse an image a daemon is serving (the
daemon holds the image's lock); after kill -9 the next mount says how many
dirty pages of which files were lost; an image fsck -y repaired mounts and
serves every file the damage did not touch; a damaged superblock copy on a
cleanly closed image stops a read-write mount until fsck has run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mounthelp import Mounter, nvramfs

from tests.image import damage as D
from tests.image.conftest import make_tree

BS = 4096


def test_mkfs_and_fsck_refuse_a_mounted_image(mounter: Mounter) -> None:
    img = mounter.image()
    m = mounter(img)
    m.p("kept").write_bytes(b"written while mkfs was refused\n")
    st = img.stat()
    out = nvramfs("mkfs", img, "--size", "8M", "--force")
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        f"{img} is in use by a mount; will not make a filesystem here"
    )
    for mode in ("-y", "-p"):
        out = nvramfs("fsck", mode, img)
        assert out.returncode == 8, out.stdout
        assert f"{img} is in use by a mount; cannot continue, aborting" in out.stderr
    out = nvramfs("fsck", img)  # -n: warns, checks
    assert "in use by a mount; checking anyway" in out.stderr
    assert out.returncode in (0, 4)
    now = img.stat()
    assert (now.st_ino, now.st_size) == (st.st_ino, st.st_size), "the image was replaced"
    assert not list(img.parent.glob(f".{img.name}.mkfs-*"))
    m.p("kept2").write_bytes(b"and after\n")  # the mount still writes its own image
    m.umount()
    assert nvramfs("fsck", img).returncode == 0
    m2 = mounter(img)
    assert m2.p("kept").read_bytes() == b"written while mkfs was refused\n"
    assert m2.p("kept2").read_bytes() == b"and after\n"
    m2.umount()
    # Unmounted, the same commands go through.
    assert nvramfs("fsck", "-y", img).returncode == 0
    assert nvramfs("mkfs", img, "--size", "8M", "--force").returncode == 0


def test_the_mount_after_a_crash_says_what_was_lost(mounter: Mounter) -> None:
    img = mounter.image()
    m = mounter(img, "writeback=600")
    m.p("d").mkdir()
    m.p("d", "big").write_bytes(os.urandom(10 * BS))
    fd = os.open(m.p("d", "big"), os.O_RDONLY)  # learn its inode through the mount
    ino = os.fstat(fd).st_ino
    os.close(fd)
    m.p("small").write_bytes(b"x" * 100)
    time.sleep(2.5)  # the once-a-second tick writes the dirty summary
    m.kill9()
    m2 = mounter(img)
    assert "11 dirty pages of 2 files were lost" in m2.stderr, m2.stderr
    assert "/d/big (10)" in m2.stderr and "/small (1)" in m2.stderr
    ev = m2.session_events()[0]
    assert ev["ev"] == "mount" and ev["recovered"] is True
    assert ev["lost_dirty_pages"] == 11 and ev["lost_dirty_files"] == 2
    assert ev["lost_dirty"][0] == {"ino": ino, "pages": 10, "path": "/d/big"}
    m2.umount()
    m3 = mounter(img)  # a clean end: nothing said
    assert "lost" not in m3.stderr
    assert "lost_dirty_pages" not in m3.session_events()[0]
    m3.umount()


def test_an_image_fsck_repaired_mounts_and_serves_the_rest(
    mounter: Mounter, tmp_path: Path
) -> None:
    tree = make_tree(tmp_path / "src")
    img = mounter.image(size="16M", tree=tree)
    etc = D.find(img, b"etc")
    conf_d = D.find(img, b"etc", b"conf.d")
    b = D.blocks_of(img, etc)[0]
    D.flip(img, b * BS + 5)  # the first entry of /etc (conf.d) names an inode out of range
    assert nvramfs("fsck", img).returncode == 4
    out = nvramfs("fsck", "-y", img)
    assert out.returncode == 1, out.stdout
    assert "/lost+found created" in out.stdout
    assert nvramfs("fsck", "-n", img).returncode == 0
    m = mounter(img)
    assert m.p("etc", "hostname").read_bytes() == b"nvram\n"
    assert m.p("usr", "lib", "libbig.so").read_bytes() == (tree / "usr/lib/libbig.so").read_bytes()
    assert os.readlink(m.p("long.link")) == "/" + "d" * 300
    moved = [p for p in m.p("lost+found").iterdir()]
    assert [p.name for p in moved] == [f"#{conf_d}"]
    assert (moved[0] / "a.conf").read_bytes() == b"x = 1\n" * 50
    m.p("new").write_bytes(b"writable\n")
    m.umount()
    assert nvramfs("fsck", img).returncode == 0


def test_damage_on_a_cleanly_closed_image_stops_a_rw_mount(mounter: Mounter) -> None:
    img = mounter.image()
    D.flip(img, 50)  # superblock copy A
    before = img.read_bytes()
    m = mounter.base / "m"
    m.mkdir()
    out = nvramfs("mount", img, m)
    assert out.returncode == 1
    assert "cleanly closed image: run fsck" in out.stderr and "\n" not in out.stderr.strip()
    assert img.read_bytes() == before
    ro = mounter(img, "ro")  # read-only is safe: served from copy B
    assert ro.p(".nvramfs").is_dir()
    ro.umount()
    assert img.read_bytes() == before
    assert nvramfs("fsck", "-p", img).returncode == 1
    mounter(img).umount()
