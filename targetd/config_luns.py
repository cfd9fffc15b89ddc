"""A ``[[target.lun]]``: its kind, size and image, and what only some kinds have (an RBD
image, a tape library's slots, tapes kept in S3)."""

from __future__ import annotations

import re
from pathlib import Path

from targetd.config_model import (
    DEFAULT_TAPE_CAPACITY,
    MIN_TAPE_CAPACITY,
    RBD_CACHE_MODES,
    GiB,
    LibraryConfig,
    LunConfig,
    RbdConfig,
    TapeStoreConfig,
)
from targetd.config_table import ConfigError, Table, parse_size

BLOCK_SIZES = (512, 4096)
# A bucket name (S3's rules: 3-63 lower-case letters, digits, dots, hyphens), then a prefix.
_S3_STORE = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?")
LUN_KINDS = ("block", "tape", "filesink", "rbd", "changer")
# A library's element address ranges (scsi.smc_elements; config does not import scsi).
MAX_LIBRARY_SLOTS = 0xFC00
MAX_MAIL_SLOTS = 0x200
MAX_LIBRARY_DRIVES = 0x100
_BARCODE = re.compile(r"[!-~]{1,32}")
MAX_LUN = 16383  # flat space addressing, the widest single-level LUN we encode


def read_lun(value: object, key: str, target_name: str, state_dir: Path) -> LunConfig:
    table = Table(value, key)
    if "lun" not in table.data:
        raise ConfigError(table.key("lun"), "missing (the LUN number)")
    number = table.take_int("lun", 0, 0, MAX_LUN)
    kind = table.take("kind", str, "block")
    if kind not in LUN_KINDS:
        raise ConfigError(table.key("kind"), f"must be one of {', '.join(LUN_KINDS)}")
    block_size = table.take("block_size", int, 512)
    if block_size not in BLOCK_SIZES:
        raise ConfigError(table.key("block_size"), f"must be 512 or 4096, got {block_size}")
    if kind in ("tape", "filesink", "changer") and "capacity" in table.data:
        # A tape's size is its capacity; either key names it, not both.
        if "size" in table.data:
            raise ConfigError(table.key("capacity"), "give either size or capacity, not both")
        table.data["size"] = table.data.pop("capacity")
    # A file sink's size is its capacity too: the bytes its directory may hold.
    default_size = DEFAULT_TAPE_CAPACITY if kind in ("tape", "filesink", "changer") else GiB
    changer = None
    if kind == "tape" and "changer" in table.data:
        # A library drive: its cartridges come from the changer, so it has no file.
        changer = table.take_int("changer", 0, 0, MAX_LUN)
        for name in ("path", "size"):
            if name in table.data:
                raise ConfigError(table.key(name), "a library drive has none (see changer)")
    size_given = "size" in table.data
    size = parse_size(table.data.pop("size", default_size), table.key("size"))
    if kind in ("tape", "changer") and size < MIN_TAPE_CAPACITY:
        raise ConfigError(table.key("size"), f"a tape holds at least {MIN_TAPE_CAPACITY} bytes")
    if kind in ("block", "rbd") and size % block_size:
        raise ConfigError(table.key("size"), f"{size} is not a multiple of block_size")
    rbd = _rbd(table) if kind == "rbd" else None
    if rbd is not None and size_given != rbd.create:
        raise ConfigError(
            table.key("size"),
            "give size with create = true (it sizes the new image; an existing image keeps its"
            " own size)"
            if size_given
            else "create = true needs the size of the image to make",
        )
    default_path = f"{target_name.replace(':', '_')}/lun{number}.img"
    if kind == "filesink":  # a directory: one plain file per backup (tape file)
        default_path = f"{target_name.replace(':', '_')}/lun{number}-sink"
    if kind == "changer":  # a directory: one tape image per cartridge
        default_path = f"{target_name.replace(':', '_')}/lun{number}-library"
    library = _library(table) if kind == "changer" else None
    store = None
    if kind == "changer" or (kind == "tape" and changer is None):
        store = _tape_store(table, named=kind == "tape")
    if kind == "tape" and store is not None:  # a directory: the tape's local spool
        default_path = f"{target_name.replace(':', '_')}/lun{number}-spool"
    path_text = table.take("path", str, default_path)
    if not path_text.strip():
        raise ConfigError(table.key("path"), "must not be empty")
    path = Path(path_text)
    read_only = table.take("read_only", bool, False)
    product = table.take("product", str, "") or None
    if product is not None and (len(product) > 16 or not product.isascii()):
        raise ConfigError(table.key("product"), "INQUIRY product id is at most 16 ASCII chars")
    table.done()
    return LunConfig(
        number,
        kind,
        state_dir / path,
        size,
        block_size,
        read_only,
        product,
        rbd,
        library,
        changer,
        store,
    )


def _library(table: Table) -> LibraryConfig:
    slots = table.take_int("slots", 20, 1, MAX_LIBRARY_SLOTS)
    mail_slots = table.take_int("mail_slots", 1, 0, MAX_MAIL_SLOTS)

    def barcode(value: object, key: str) -> str:
        if not isinstance(value, str) or not _BARCODE.fullmatch(value) or "/" in value:
            raise ConfigError(key, f"a barcode is 1-32 printable ASCII characters, got {value!r}")
        return value

    tapes = table.take_list("tapes", barcode)
    if len(set(tapes)) != len(tapes):
        raise ConfigError(table.key("tapes"), "a barcode is listed twice")
    if len(tapes) > slots:
        raise ConfigError(table.key("tapes"), f"{len(tapes)} tapes do not fit {slots} slots")
    return LibraryConfig(slots, mail_slots, tapes)


def _tape_store(table: Table, *, named: bool) -> TapeStoreConfig | None:
    """``store`` (with ``s3_endpoint``, ``s3_region``) of a changer or a tape LUN; a
    tape's address names the tape itself, so it has a name after the bucket."""
    store = table.take("store", str, "") or None
    if store is not None and not _S3_STORE.fullmatch(store):
        raise ConfigError(table.key("store"), f"an s3://bucket/prefix address, got {store!r}")
    if store is not None and named and not store[len("s3://") :].rstrip("/").count("/"):
        raise ConfigError(table.key("store"), f"s3://bucket/NAME names the tape, got {store!r}")
    endpoint = table.take("s3_endpoint", str, "") or None
    region = table.take("s3_region", str, "") or None
    if store is None and (endpoint or region):
        raise ConfigError(table.key("s3_endpoint" if endpoint else "s3_region"), "needs store")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(table.key("s3_endpoint"), f"an http(s):// URL, got {endpoint!r}")
    return None if store is None else TapeStoreConfig(store, endpoint, region)


def _rbd(table: Table) -> RbdConfig:
    """The keys of an RBD LUN: the image lives in Ceph, not under ``path``."""
    for name in ("pool", "image"):
        if name not in table.data:
            raise ConfigError(table.key(name), "missing (an rbd LUN names its pool and image)")
    if "path" in table.data:
        raise ConfigError(table.key("path"), "an rbd LUN has no path (its image is in Ceph)")
    texts = {}
    for name in ("pool", "image", "namespace", "ceph_conf", "client", "keyring"):
        texts[name] = table.take(name, str, "").strip()
    for name in ("pool", "image"):
        if not texts[name] or "/" in texts[name] or "@" in texts[name]:
            raise ConfigError(table.key(name), f"must be a plain name, got {texts[name]!r}")
    cache = table.take("cache", str, "none")
    if cache not in RBD_CACHE_MODES:
        raise ConfigError(table.key("cache"), f"must be one of {', '.join(RBD_CACHE_MODES)}")
    return RbdConfig(
        pool=texts["pool"],
        image=texts["image"],
        namespace=texts["namespace"],
        ceph_conf=texts["ceph_conf"] or "/etc/ceph/ceph.conf",
        client=texts["client"] or "admin",
        keyring=texts["keyring"],
        create=table.take("create", bool, False),
        cache=cache,
        osd_op_timeout=table.take_int("osd_op_timeout", 30, 0, 3600),
        connect_timeout=table.take_int("connect_timeout", 30, 1, 3600),
    )


def check_libraries(luns: tuple[LunConfig, ...], key: str) -> None:
    """Every library drive names a changer LUN of its own target."""
    changers = {lun.lun for lun in luns if lun.kind == "changer"}
    drives: dict[int, int] = {}
    for i, lun in enumerate(luns):
        if lun.changer is None:
            continue
        if lun.changer not in changers:
            raise ConfigError(
                f"{key}.lun[{i}].changer", f"LUN {lun.changer} is not a changer of this target"
            )
        drives[lun.changer] = drives.get(lun.changer, 0) + 1
        if drives[lun.changer] > MAX_LIBRARY_DRIVES:
            raise ConfigError(f"{key}.lun[{i}].changer", "too many drives in one library")
