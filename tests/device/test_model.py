"""The device model on hand-computed cases: each figure below is worked out from the
medium's TOML by hand, not by calling the code under test."""

from __future__ import annotations

import numpy as np
import pytest

from nvramfs.device import KINDS, DeviceModel, kernel_costs, load_medium
from nvramfs.errors import UsageError

K = kernel_costs()


def model(name: str, nr_blocks: int = 256, programmed: np.ndarray | None = None) -> DeviceModel:
    return DeviceModel(load_medium(name), nr_blocks, programmed=programmed)


def test_builtin_media_load_and_default_is_nor():
    from nvramfs.device import BUILTIN, DEFAULT_MEDIUM

    assert DEFAULT_MEDIUM == "nor"
    for name in BUILTIN:
        assert load_medium(name).name == name


def test_xip_read_of_one_page_on_each_medium():
    # NOR: 128 page-mode pages of 32 B at 315 ns = 40,320 ns; the bandwidth
    # floor (4096 B at 101 MB/s) is 40,554 ns, the larger, so it is the price.
    nor = model("nor")
    nor.xip_read(1)
    assert nor.modelled_ns["xip_read"] == pytest.approx(4096 / 0.101)
    # Optane: 16 XPLines: 305 + 15 x 169 = 2840 ns; bandwidth floor 4096/6.6 = 620.6 ns.
    opt = model("optane")
    opt.xip_read(1)
    assert opt.modelled_ns["xip_read"] == pytest.approx(2840)
    # PCM: 64 lines x 48 ns = 3072 ns; floor 4096 / 1.333 = 3072.8 ns.
    pcm = model("pcm")
    pcm.xip_read(1)
    assert pcm.modelled_ns["xip_read"] == pytest.approx(4096 / 1.333)
    # DRAM: 81 + 63 x 10 = 711 ns; floor 4096 / 6.5 = 630.2 ns.
    dram = model("dram")
    dram.xip_read(1)
    assert dram.modelled_ns["xip_read"] == pytest.approx(711)


def test_hit_is_a_dram_page_read_whatever_the_medium():
    for name in ("nor", "optane"):
        m = model(name)
        m.hit(3)
        assert m.modelled_ns["hit"] == pytest.approx(3 * 711)


def test_cow_is_a_medium_read_plus_a_4k_copy():
    m = model("optane")
    m.copy_in("cow", 2)
    assert m.modelled_ns["cow"] == pytest.approx(2 * (2840 + K.copy_4k_ns))
    with pytest.raises(ValueError):
        m.copy_in("hit")


def test_nor_writeback_into_an_erased_block_needs_no_erase():
    m = model("nor")
    m.writeback(np.array([5]))
    # 8 buffer programs of 512 B at 340 us (the bandwidth floor gives the same).
    assert m.modelled_ns["writeback"] == pytest.approx(8 * 340_000, rel=1e-3)
    assert m.erases == 0 and m.modelled_ns["erase"] == 0
    assert m.bytes_programmed == 4096 and m.bytes_written_back == 4096


def test_nor_rewrite_erases_the_sector_and_reprograms_its_live_pages():
    programmed = np.zeros(256, dtype=bool)
    programmed[32:40] = True  # sector 1 holds 8 live pages
    m = model("nor", programmed=programmed)
    m.writeback(np.array([33]))
    # erase: read the 7 other live pages, erase once, program them back.
    read = 128 * 315
    prog = 8 * 340_000
    assert m.modelled_ns["erase"] == pytest.approx(7 * read + 275_000_000 + 7 * prog, rel=1e-3)
    assert m.modelled_ns["writeback"] == pytest.approx(prog, rel=1e-3)
    assert m.erases == 1 and m.sector_erases[1] == 1 and m.sector_programs[1] == 8
    assert m.bytes_erased == 131072
    wa = m.write_amplification()
    assert wa["programmed"] == pytest.approx(8.0) and wa["erased"] == pytest.approx(32.0)
    # Once erased and reprogrammed, a second rewrite of a reprogrammed page erases again.
    m.writeback(np.array([34]))
    assert m.erases == 2


def test_nor_one_erase_covers_every_target_of_a_sector_in_one_batch():
    programmed = np.zeros(256, dtype=bool)
    programmed[0:32] = True
    m = model("nor", programmed=programmed)
    m.writeback(np.arange(0, 32))
    assert m.erases == 1
    assert m.bytes_programmed == 32 * 4096  # nothing else was live in the sector


def test_nor_freed_blocks_are_not_reprogrammed_and_become_erased():
    programmed = np.zeros(256, dtype=bool)
    programmed[0:4] = True
    m = model("nor", programmed=programmed)
    m.free(np.array([1, 2, 3]))
    m.writeback(np.array([0]))
    assert m.erases == 1 and m.bytes_programmed == 4096
    m.writeback(np.array([1]))  # erased by the first cycle: no second erase
    assert m.erases == 1


def test_in_place_media_never_erase():
    m = model("pcm", programmed=np.ones(256, dtype=bool))
    m.writeback(np.array([7, 7, 8]))  # a block twice in one batch is programmed once
    assert m.erases == 0 and m.bytes_programmed == 2 * 4096
    assert m.modelled_ns["writeback"] == pytest.approx(2 * 64 * 150)


def test_totals_are_the_sum_of_their_parts():
    m = model("nor", programmed=np.ones(256, dtype=bool))
    m.hit(10)
    m.xip_read(5)
    m.fault(4)
    m.copy_in("promote", 2)
    m.copy_in("cow", 1)
    m.demote(3)
    m.writeback(np.array([1, 40]))
    assert m.total_ns == pytest.approx(sum(m.modelled_ns.values()))
    assert set(m.summary()["modelled_ns"]) == set(KINDS)
    assert m.modelled_ns["fault"] == pytest.approx(4 * K.minor_fault_ns)
    assert m.modelled_ns["demote"] == pytest.approx(3 * K.unmap_ns)


def test_lifetime_nor_is_endurance_over_the_worst_sectors_erase_rate():
    m = model("nor", programmed=np.ones(256, dtype=bool))
    for _ in range(10):
        m.writeback(np.array([0]))
    # 10 erases of sector 0 in 100 s: 0.1/s; 100,000 cycles -> 1e6 s.
    assert m.lifetime_years(100.0) == pytest.approx(1e6 / (365.25 * 86400))
    assert m.worst_sectors()[0] == {"sector": 0, "first_block": 0, "erases": 10, "programs": 320}


def test_lifetime_optane_is_the_module_rating_over_the_write_rate():
    m = model("optane")
    m.writeback(np.arange(10))
    rate = 10 * 4096 / 2.0
    assert m.lifetime_years(2.0) == pytest.approx(363e15 / rate / (365.25 * 86400))


def test_unknown_medium_is_a_usage_error_naming_the_builtins(tmp_path):
    with pytest.raises(UsageError, match="built-in media: dram, nor, pcm, optane"):
        load_medium("flash")
    with pytest.raises(UsageError, match="cannot read it"):
        load_medium(str(tmp_path / "missing.toml"))


def test_a_users_profile_file(tmp_path):
    text = (
        (load_medium.__globals__["resources"])
        .files("nvramfs.device")
        .joinpath("media", "pcm.toml")
        .read_text()
    )
    p = tmp_path / "mine.toml"
    p.write_text(text.replace('name = "pcm"', 'name = "mine"'))
    assert load_medium(str(p)).name == "mine"
    p.write_text(text.replace("read_random_ns = 48", 'read_random_ns = "fast"'))
    with pytest.raises(UsageError, match="read_random_ns must be a number"):
        load_medium(str(p))
    p.write_text(text + "\nbogus = 1\n")
    with pytest.raises(UsageError, match="unknown field 'bogus'"):
        load_medium(str(p))
    p.write_text("not toml [")
    with pytest.raises(UsageError, match="not a medium profile"):
        load_medium(str(p))


def _writeback_sector_by_sector(d: DeviceModel, blocks: np.ndarray) -> None:
    """The NOR writeback as a loop over the sectors to erase (the model's definition,
    one sector at a time): the reference for the vectorised DeviceModel.writeback."""
    b = np.unique(np.asarray(blocks, dtype=np.int64))
    b = b[(b >= 0) & (b < d.nr_blocks)]
    if not len(b):
        return
    m = d.medium
    d.bytes_written_back += len(b) * 4096
    spp = d.sector_pages
    sectors = b // spp
    dirty_sectors = np.unique(sectors[d.programmed[b]])
    in_erase = np.isin(sectors, dirty_sectors)
    if not in_erase.all():
        d._program(b[~in_erase], "writeback")
    for sector in dirty_sectors:
        lo = int(sector) * spp
        targets = b[sectors == sector]
        keep = np.setdiff1d(np.flatnonzero(d.live[lo : lo + spp]) + lo, targets)
        d.modelled_ns["erase"] += len(keep) * d._page_nvram_read_ns + m.erase_ns
        d.sector_erases[sector] += 1
        d.erases += 1
        d.bytes_erased += m.erase_sector
        d.programmed[lo : lo + spp] = False
        d.live[lo : lo + spp] = False
        if len(keep):
            d._program(keep, "erase")
        d._program(targets, "writeback")


def _assert_same_model(a: DeviceModel, b: DeviceModel) -> None:
    """The same modelled_ns bits (exact, not approx), wear arrays and byte counts."""
    assert a.modelled_ns == b.modelled_ns
    for name in ("programmed", "live", "sector_programs", "sector_erases"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a.erases, a.bytes_erased, a.bytes_programmed, a.bytes_written_back) == (
        b.erases, b.bytes_erased, b.bytes_programmed, b.bytes_written_back
    )  # fmt: skip


def test_nor_batched_writeback_is_the_sector_loop_exactly():
    """Random batches, frees and rewrites: the vectorised writeback leaves the same
    wear arrays, byte counts and the same modelled_ns bits as the sector loop."""
    rng = np.random.default_rng(3)
    programmed = rng.random(1000) < 0.5
    a, b = model("nor", 1000, programmed), model("nor", 1000, programmed)
    for _ in range(200):
        batch = rng.choice(1000, int(rng.integers(1, 200)), replace=False)
        if rng.random() < 0.2:
            freed = rng.choice(1000, 50, replace=False)
            a.free(freed)
            b.free(freed)
        a.writeback(batch)
        _writeback_sector_by_sector(b, batch)
    _assert_same_model(a, b)
    assert a.erases > 100


@pytest.mark.parametrize("medium", ["nor", "optane"])
def test_one_page_writebacks_are_the_sector_loop_exactly(medium):
    """fsync's one-page writebacks (their own short path), between batches and frees:
    the same wear arrays, byte counts and modelled_ns bits as the sector loop."""
    rng = np.random.default_rng(11)
    programmed = rng.random(1000) < 0.5
    a, b = model(medium, 1000, programmed), model(medium, 1000, programmed)
    for _ in range(600):
        r = rng.random()
        if r < 0.1:
            freed = rng.choice(1000, 50, replace=False)
            a.free(freed)
            b.free(freed)
        batch = rng.choice(1000, 1 if r < 0.8 else int(rng.integers(2, 50)), replace=False)
        a.writeback(batch)
        if b.medium.in_place:  # the definition there: every target just programmed
            b.bytes_written_back += len(batch) * 4096
            b._program(np.unique(batch), "writeback")
        else:
            _writeback_sector_by_sector(b, batch)
    a.writeback(np.array([1000, -1]))  # outside the device: nothing
    a.writeback(np.array([1000]))
    _assert_same_model(a, b)
    assert (a.erases > 100) == (medium == "nor")
