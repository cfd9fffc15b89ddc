"""The tape library the integration and guest tiers serve (docs/tape.md): a changer at LUN 0
with four slots, a mail slot and its cartridges, and its drives at the LUNs after it. (Named
uniquely: pytest imports test helpers by file name.)"""

from __future__ import annotations

from collections.abc import Sequence


def library_targets(
    iqn: str,
    *,
    capacity: str,
    tapes: Sequence[str] = ("TD0001L6", "TD0002L6"),
    drives: int = 2,
    store: str | None = None,
    s3_endpoint: str | None = None,
) -> str:
    """The ``[[target]]`` of such a library; ``store`` (with ``s3_endpoint``) puts its
    cartridges in an S3 bucket."""
    barcodes = ", ".join(f'"{tape}"' for tape in tapes)
    text = f"""
[[target]]
name = "{iqn}"
[[target.lun]]
lun = 0
kind = "changer"
path = "vtl"
slots = 4
mail_slots = 1
capacity = "{capacity}"
tapes = [{barcodes}]
"""
    if store is not None:
        text += f'store = "{store}"\ns3_endpoint = "{s3_endpoint}"\n'
    for lun in range(1, drives + 1):
        text += f'[[target.lun]]\nlun = {lun}\nkind = "tape"\nchanger = 0\n'
    return text
