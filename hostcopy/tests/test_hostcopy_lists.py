"""The tool's parameter lists, decoded by the copy manager's own decoder (xcopy.params):
what the tool builds is what the daemon reads, and every list stays within the limits."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hostcopy import commands as c
from hostcopy.label import LABEL_SIZE, Label, decode
from hostcopy.lists import (
    Layout,
    Volume,
    backup_lists,
    record_size,
    restore_lists,
    sg_raw_line,
    verify_lists,
)
from scsi.sense import Reason, build_sense
from xcopy import limits as xl
from xcopy import params
from xcopy.results import operating_parameters, third_party_copy_page

MiB = 1 << 20
NAA_SRC = c.Designator(0, 1, 0, 3, bytes.fromhex("6001405796c0aa52726183521d9df875"))
NAA_TAPE = c.Designator(0, 1, 0, 3, bytes.fromhex("60014050000000000000000000000002"))
LABEL = Label("NAA x", "00", 0, 512, 0, "2026-11-29T00:00:00.000Z").encode()


def daemon_limits() -> c.CopyLimits:
    """What targetd reports, through the tool's decoders."""
    found = c.operating_parameters(operating_parameters())
    return c.narrow_by_vpd8f(found, third_party_copy_page(0))


def test_limits_decode_what_the_daemon_reports() -> None:
    lim = daemon_limits()
    assert lim.max_cscds == xl.MAX_CSCD_DESCRIPTORS
    assert lim.max_segments == xl.MAX_SEGMENT_DESCRIPTORS
    assert lim.max_descriptor_list == xl.MAX_DESCRIPTOR_LIST_LENGTH
    assert lim.max_segment_length == xl.MAX_SEGMENT_LENGTH
    assert lim.max_inline == xl.MAX_INLINE_DATA_LENGTH
    assert lim.max_stream_transfer == xl.MAX_STREAM_TRANSFER
    assert lim.data_granularity == 512
    assert lim.inline_granularity == 4
    assert {0x00, 0x01, 0x04, 0x10, 0xE4} <= lim.descriptor_codes


def test_vpd_8f_narrows_the_stream_limit() -> None:
    page = bytearray(third_party_copy_page(0))
    at = page.find(bytes.fromhex("9101"))
    page[at + 6 : at + 10] = (2 * MiB).to_bytes(4, "big")
    assert c.narrow_by_vpd8f(daemon_limits(), bytes(page)).max_stream_transfer == 2 * MiB


def test_512_mib_in_2_mib_records_is_two_lists_within_the_segment_limit() -> None:
    """The issue's example: 256 records plus label and file mark do not fit 256 segments."""
    lim = daemon_limits()
    layout = Layout(512 * MiB, 512, record_size(lim, 512, 2 * MiB))
    lists = backup_lists(
        first_list_id=10, destination=NAA_TAPE, volumes=[Volume(NAA_SRC, layout, LABEL)],
        limits=lim,
    )  # fmt: skip
    decoded = [params.decode(params.LID4, p) for p in lists]
    assert len(decoded) == 2
    assert [d.list_id for d in decoded] == [10, 11]
    assert all(len(d.segments) <= lim.max_segments for d in decoded)
    kinds = [s.type_code for d in decoded for s in d.segments]
    assert kinds[0] == params.INLINE_TO_STREAM and kinds[-1] == params.WRITE_FILEMARKS
    data = [s for d in decoded for s in d.segments if s.type_code == params.BLOCK_TO_STREAM]
    assert len(data) == 256
    assert [s.source_lba for s in data] == [n * 4096 for n in range(256)]
    assert {(s.stream_length, s.blocks) for s in data} == {(2 * MiB, 4096)}
    assert decoded[0].inline_data == LABEL


@settings(max_examples=60, deadline=None)
@given(
    blocks=st.integers(1, 1 << 16),
    block_size=st.sampled_from([512, 4096]),
    record=st.integers(1, 16 * MiB) | st.integers(1, 64 * 1024),
    max_segments=st.integers(3, 300),
    max_list=st.integers(2 * 32 + 2 * 24 + 28, 9000),
)
def test_any_volume_cuts_into_lists_the_daemon_accepts(
    blocks: int, block_size: int, record: int, max_segments: int, max_list: int
) -> None:
    base = daemon_limits()
    lim = c.CopyLimits(
        base.max_cscds, min(max_segments, xl.MAX_SEGMENT_DESCRIPTORS),
        min(max_list, xl.MAX_DESCRIPTOR_LIST_LENGTH), base.max_segment_length, base.max_inline,
        base.max_stream_transfer, base.data_granularity, base.inline_granularity,
        base.descriptor_codes,
    )  # fmt: skip
    try:
        size = record_size(lim, block_size, record)
    except ValueError:
        assert record < block_size
        return
    layout = Layout(blocks * block_size, block_size, size)
    assume(layout.records <= 3000)  # keeps an example quick; the cut does not depend on it
    for build in ("backup", "restore", "verify"):
        if build == "verify":
            lists = verify_lists(first_list_id=1, source=NAA_TAPE, layout=layout, limits=lim)
            code, lba = params.STREAM_TO_BLOCK, "destination_lba"
            first, *_, last = [s for p in lists for s in params.decode(params.LID4, p).segments]
            assert (first.type_code, last.type_code) == (params.START_DIGEST, params.CHECK_LABEL)
            assert params.decode(params.LID4, lists[0]).cscds[1].nul
        elif build == "backup":
            lists = backup_lists(
                first_list_id=1, destination=NAA_TAPE, volumes=[Volume(NAA_SRC, layout, LABEL)],
                limits=lim,
            )  # fmt: skip
            code, lba = params.BLOCK_TO_STREAM, "source_lba"
        else:
            lists = restore_lists(
                first_list_id=1, source=NAA_TAPE, destination=NAA_SRC, layout=layout,
                limits=lim, destination_lba=0,
            )  # fmt: skip
            code, lba = params.STREAM_TO_BLOCK, "destination_lba"
        covered = 0
        for p in lists:
            d = params.decode(params.LID4, p)
            assert d.immed and d.list_id_usage == params.USAGE_HOLD
            assert len(d.segments) <= lim.max_segments
            assert len(p) - 48 - len(d.inline_data) <= lim.max_descriptor_list
            for s in d.segments:
                if s.type_code == code and build == "verify":
                    assert s.stream_length == s.blocks * block_size <= size
                    covered += s.stream_length
                elif s.type_code == code:
                    assert getattr(s, lba) * block_size == covered
                    assert s.stream_length == s.blocks * block_size <= size
                    covered += s.stream_length
        assert covered == layout.length


def test_cscd_names_the_lu_as_the_daemon_matches_it() -> None:
    lists = backup_lists(
        first_list_id=1, destination=NAA_TAPE,
        volumes=[Volume(NAA_SRC, Layout(MiB, 512, MiB), LABEL)], limits=daemon_limits(),
    )  # fmt: skip
    src, dst = params.decode(params.LID4, lists[0]).cscds
    assert (src.device_type, src.block_length, src.designator) == (0, 512, NAA_SRC.value)
    assert (dst.device_type, dst.block_length, dst.fixed) == (1, 0, False)
    assert (src.code_set, src.association, src.designator_type) == (1, 0, 3)


def test_record_size_is_capped_by_the_stream_limit_and_the_block_count_field() -> None:
    lim = daemon_limits()
    assert record_size(lim, 512, 64 * MiB) == xl.MAX_STREAM_TRANSFER
    assert record_size(lim, 512, MiB + 100) == MiB
    with pytest.raises(ValueError):
        record_size(lim, 4096, 512)


def test_designator_choice_prefers_naa_of_the_lu() -> None:
    def desc(code_set: int, assoc_type: int, value: bytes) -> bytes:
        return bytes([code_set, assoc_type, 0, len(value)]) + value

    body = (
        desc(2, 0x01, b"TARGETD lun0")  # T10, LU
        + desc(1, 0x13, bytes(16))  # NAA, target port association: not the LU
        + desc(1, 0x03, bytes(range(16)))  # NAA, LU
    )
    page = bytes([0, 0x83]) + len(body).to_bytes(2, "big") + body
    chosen = c.lu_designator(page)
    assert (chosen.designator_type, chosen.association, chosen.value) == (3, 0, bytes(range(16)))
    assert str(chosen) == "NAA " + bytes(range(16)).hex()
    only_t10 = bytes([0, 0x83, 0, 16]) + desc(2, 0x01, b"TARGETD lun0")
    assert str(c.lu_designator(only_t10)) == "T10 TARGETD lun0"
    with pytest.raises(ValueError):
        c.lu_designator(bytes([0, 0x83, 0, 20]) + desc(1, 0x13, bytes(16)))


def test_label_round_trip_and_refusals() -> None:
    label = Label("NAA 60", "60", 512 * MiB, 512, 2 * MiB, "2026-11-29T18:00:00.000Z", "db",
                  "2026-11-29T17:59:59.000Z", "reflect-first", "/dev/sg3")  # fmt: skip
    raw = label.encode()
    assert len(raw) == LABEL_SIZE and len(raw) % 4 == 0
    assert decode(raw) == label
    assert decode(bytes(512)) is None
    assert decode(raw[:30] + b"x" + raw[31:]) is None  # JSON broken
    with pytest.raises(ValueError):
        Label("x" * 600, "", 0, 512, 0, "").encode()


def test_sg_raw_line_is_extended_copy_lid4_with_the_list_length() -> None:
    assert sg_raw_line("/dev/sg3", "b.bin", 0x1870) == (
        "sg_raw -s 6256 -i b.bin /dev/sg3 83 01 00 00 00 00 00 00 00 00 00 00 18 70 00 00"
    )


def test_copy_status_decodes_a_failed_copy_with_its_sense() -> None:
    sense = build_sense(Reason.COPY_TARGET_DEVICE_DATA_UNDERRUN)
    raw = bytes.fromhex("010200010000000002") + bytes([len(sense), len(sense), 2])
    raw += (3).to_bytes(8, "big") + (7).to_bytes(2, "big") + bytes(6) + sense
    raw = len(raw).to_bytes(4, "big") + raw
    got = c.copy_status_lid4(raw)
    assert (got.state, got.transferred, got.segments, got.running) == (2, 3 * MiB, 7, False)
    assert got.sense == sense
    assert got.words == "failed"


NAA_LOG = c.Designator(0, 1, 0, 3, bytes.fromhex("60014050000000000000000000000003"))


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=15),
    max_segments=st.integers(3, 256),
    max_list=st.integers(16 * 32 + 3 * 24, xl.MAX_DESCRIPTOR_LIST_LENGTH),
    max_inline=st.sampled_from([512, 1024, 4096, 65536]),
)
def test_several_volumes_pack_into_lists_one_tape_file_each(
    sizes: list[int], max_segments: int, max_list: int, max_inline: int
) -> None:
    """A group's volumes in as few lists as the limits allow: each volume is, in order, its
    label, its records from LBA 0 to its end, and a file mark; no list breaks a limit."""
    base = daemon_limits()
    lim = c.CopyLimits(
        base.max_cscds, max_segments, max_list, base.max_segment_length, max_inline,
        base.max_stream_transfer, base.data_granularity, base.inline_granularity,
        base.descriptor_codes,
    )  # fmt: skip
    names = [c.Designator(0, 1, 0, 3, bytes([i]) * 16) for i in range(len(sizes))]
    volumes = [  # identifiers of 5-8 bytes: the inline data after each stays aligned
        Volume(
            d,
            Layout(n * 64 * 1024, 512, 64 * 1024),
            f"label {i}".encode().ljust(512),
            f"id-{i}" + "x" * (i % 4),
        )
        for i, (d, n) in enumerate(zip(names, sizes, strict=True))
    ]
    lists = backup_lists(first_list_id=7, destination=NAA_TAPE, volumes=volumes, limits=lim)
    stream: list[tuple[str, int, int]] = []  # what reaches the tape, in order
    for p in lists:
        d = params.decode(params.LID4, p)
        n = len(volumes)
        assert [x.designator for x in d.cscds] == [v.designator.value for v in volumes] + [
            NAA_TAPE.value
        ]
        assert len(d.segments) <= lim.max_segments
        assert len(p) - 48 - len(d.inline_data) <= lim.max_descriptor_list
        assert len(d.inline_data) <= lim.max_inline
        for s in d.segments:
            if s.type_code in (params.INLINE_TO_STREAM, params.WRITE_LABEL):
                assert s.source_offset % lim.inline_granularity == 0
                inline = d.inline_data[s.source_offset : s.source_offset + s.byte_count]
            if s.type_code == params.INLINE_TO_STREAM:
                stream.append(("label", int(inline.split()[1]), s.destination))
            elif s.type_code == params.START_DIGEST:
                stream.append(("start", 0, s.destination))
            elif s.type_code == params.WRITE_LABEL:
                stream.append(("end", int(inline.split(b"-")[1].rstrip(b"x")), s.destination))
            elif s.type_code == params.BLOCK_TO_STREAM:
                assert s.destination == n
                stream.append(("data", s.source, s.source_lba))
            else:
                assert s.type_code == params.WRITE_FILEMARKS and s.destination == n
                stream.append(("mark", 0, 0))
    expected: list[tuple[str, int, int]] = []
    for i, v in enumerate(volumes):
        expected += [("label", i, len(volumes)), ("start", 0, len(volumes))]
        expected += [("data", i, off // 512) for off, _ in v.layout.extents()]
        expected += [("end", i, len(volumes)), ("mark", 0, 0)]
    assert stream == expected
    assert [params.decode(params.LID4, p).list_id for p in lists] == list(range(7, 7 + len(lists)))


def test_sixteen_volumes_do_not_fit_one_lists_cscds() -> None:
    layout = Layout(MiB, 512, MiB)
    with pytest.raises(ValueError, match="at most 15"):
        backup_lists(
            first_list_id=1, destination=NAA_TAPE, limits=daemon_limits(),
            volumes=[Volume(NAA_LOG, layout, LABEL)] * 16,
        )  # fmt: skip
