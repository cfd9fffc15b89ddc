"""Vendor-specific sense (ASC 80h): one table, no value handed out twice, every value in the
docs, and no value an initiator has seen ever changes."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from scsi.sense import VENDOR_ASC, Reason, SenseKey, VendorAscq

DOCS = Path(__file__).resolve().parents[2] / "docs" / "pairs.md"

# What has shipped: (sense key, ASCQ) of each vendor reason. Initiators' scripts and
# targetd-copy match on these, so a change here is a change of the wire protocol.
SHIPPED = {
    "PAIR_NOT_FOUND": (0x5, 0x01),
    "PAIR_WRONG_STATE": (0x5, 0x02),
    "PAIR_SIZE_MISMATCH": (0x5, 0x03),
    "PAIR_LUN_ALREADY_PAIRED": (0x5, 0x04),
    "PAIR_NAME_IN_USE": (0x5, 0x05),
    "PAIR_SAME_LUN": (0x5, 0x06),
    "PAIR_LUN_READ_ONLY": (0x5, 0x07),
    "PAIR_ALREADY_IN_GROUP": (0x5, 0x08),
    "PAIR_TOO_MANY_SECONDARIES": (0x5, 0x09),
    "PAIR_LUN_AMBIGUOUS": (0x5, 0x0A),
    "COPY_SOURCE_PAIR_NOT_SPLIT": (0xA, 0x02),
    "COPY_SPLIT_IMAGE_LOST": (0xA, 0x10),
    "COPY_NO_DIGEST": (0xA, 0x20),
    "COPY_NO_END_LABEL": (0xA, 0x21),
}


def vendor_reasons() -> dict[str, tuple[SenseKey, int, int]]:
    """Every name of the Reason enum under ASC 80h, aliases included: Enum folds a second
    name with an equal value into the first, which would hide a clash from iteration."""
    return {
        name: member.value
        for name, member in Reason.__members__.items()
        if member.value[1] == VENDOR_ASC
    }


def test_no_ascq_is_handed_out_twice() -> None:
    by_value: dict[int, list[str]] = defaultdict(list)
    for name, code in VendorAscq.__members__.items():
        by_value[int(code)].append(name)
    assert {v: names for v, names in by_value.items() if len(names) > 1} == {}


def test_no_two_vendor_reasons_share_an_ascq_under_one_sense_key() -> None:
    by_code: dict[tuple[int, int, int], list[str]] = defaultdict(list)
    for name, value in vendor_reasons().items():
        by_code[value].append(name)
    assert {code: names for code, names in by_code.items() if len(names) > 1} == {}


def test_every_vendor_reason_takes_its_ascq_from_the_table() -> None:
    table = {int(code) for code in VendorAscq}
    assert {n: v[2] for n, v in vendor_reasons().items() if v[2] not in table} == {}
    # ... and the table holds nothing no reason uses.
    used = {v[2] for v in vendor_reasons().values()}
    assert table - used == set()


def test_no_shipped_value_changed() -> None:
    assert {n: (int(v[0]), v[2]) for n, v in vendor_reasons().items()} == SHIPPED


def test_the_docs_list_every_vendor_reason_and_nothing_else() -> None:
    rows = re.findall(
        r"^\| 80h/([0-9A-F]{2})h \| ([0-9A-F])h \| ([A-Z_]+) \|", DOCS.read_text(), re.M
    )
    documented = {name: (int(key, 16), int(ascq, 16)) for ascq, key, name in rows}
    assert len(documented) == len(rows)  # no reason listed twice
    assert documented == {n: (int(v[0]), v[2]) for n, v in vendor_reasons().items()}
