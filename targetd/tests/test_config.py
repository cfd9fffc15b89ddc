"""load_config: every key validated, errors name the key as ``target[0].lun[1].size``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from targetd.config import (
    ChapSecret,
    Config,
    ConfigError,
    GiB,
    Portal,
    check_images,
    default_config,
    is_valid_iscsi_name,
    load_config,
    parse_hostport,
    parse_size,
)

MiB = 1 << 20
TARGET = """
[[target]]
name = "iqn.2026-11.org.example:disk"
[[target.lun]]
lun = 0
"""

NO_LUN_NUMBER = """
[[target]]
name = "iqn.2026-11.org.example:disk"
[[target.lun]]
"""

FULL = """
state_dir = "state"

[[portal]]
listen = "127.0.0.1:3260"
advertise = "192.0.2.10:3260"

[[portal]]
listen = "[::1]:3261"
tpgt = 2

[discovery]
chap = { user = "scout", secret = "discovery-secret" }
mutual_chap = { user = "portal", secret = "portal-secret-1" }

[limits]
max_sessions = 16
max_connections_per_session = 2
max_recv_data_segment_length = "64KiB"
max_burst_length = "1MiB"
first_burst_length = 65536
max_outstanding_r2t = 4
buffers_total = "2GiB"
buffers_per_session = "128MiB"
buffer_pool = "32MiB"

[[target]]
name = "iqn.2026-11.org.example:db"
alias = "database"
allowed_initiators = ["iqn.1994-05.com.redhat:host1", "eui.02004567A425678D"]
chap = { user = "db-host", secret = "db-host-secret" }
mutual_chap = { user = "db-target", secret = "db-target-secret" }

[[target.lun]]
lun = 0
path = "db/source.img"
size = "2GiB"

[[target.lun]]
lun = 1
path = "/srv/images/copy.img"
size = 1073741824
block_size = 4096
read_only = true
product = "MIRROR"

[[target]]
name = "naa.6001405abcdef0123456789abcdef012"
[[target.lun]]
lun = 0
kind = "tape"
size = "512MiB"
"""


def load(tmp_path: Path, text: str, **kwargs: object) -> Config:
    path = tmp_path / "targetd.toml"
    path.write_text(text)
    return load_config(path, **kwargs)  # type: ignore[arg-type]


def error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


def test_full_example(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    state = tmp_path / "state"
    assert config.state_dir == state
    assert config.portals == (
        Portal("127.0.0.1", 3260, "192.0.2.10:3260", 1),
        Portal("::1", 3261, None, 2),
    )
    assert config.portals[1].advertised == "[::1]:3261"
    assert config.discovery_chap == ChapSecret("scout", "discovery-secret")
    assert config.discovery_mutual_chap == ChapSecret("portal", "portal-secret-1")
    assert (config.max_sessions, config.max_connections_per_session) == (16, 2)
    assert config.max_recv_data_segment_length == 64 * 1024
    assert config.max_burst_length == MiB
    assert config.first_burst_length == 65536
    assert config.max_outstanding_r2t == 4
    assert (config.buffers_total, config.buffers_per_session, config.buffer_pool) == (
        2 << 30,
        128 << 20,
        32 << 20,
    )
    db, tape = config.targets
    assert db.name == "iqn.2026-11.org.example:db"
    assert db.alias == "database"
    assert db.allowed_initiators == ("iqn.1994-05.com.redhat:host1", "eui.02004567A425678D")
    assert db.chap == ChapSecret("db-host", "db-host-secret")
    assert db.mutual_chap == ChapSecret("db-target", "db-target-secret")
    source, copy = db.luns
    assert (source.lun, source.kind, source.path, source.size) == (
        0,
        "block",
        state / "db/source.img",
        2 * GiB,
    )
    assert (source.block_size, source.read_only, source.product) == (512, False, None)
    assert copy.path == Path("/srv/images/copy.img")
    assert (copy.size, copy.block_size, copy.read_only, copy.product) == (GiB, 4096, True, "MIRROR")
    (tape_lun,) = tape.luns
    assert (tape_lun.kind, tape_lun.size) == ("tape", 512 * MiB)
    assert tape_lun.path == state / "naa.6001405abcdef0123456789abcdef012/lun0.img"
    assert config.target("iqn.2026-11.org.example:db") is db


def test_defaults_of_a_minimal_file(tmp_path: Path) -> None:
    config = load(tmp_path, TARGET, state_dir=tmp_path / "s")
    assert config.portals == (Portal(),)
    assert config.state_dir == tmp_path / "s"
    (lun,) = config.targets[0].luns
    assert lun.path == tmp_path / "s" / "iqn.2026-11.org.example_disk" / "lun0.img"
    assert (lun.size, lun.block_size, lun.kind) == (GiB, 512, "block")
    defaults = Config()
    assert config.max_burst_length == defaults.max_burst_length
    assert config.discovery_chap is None and config.targets[0].chap is None


def test_state_dir_argument_overrides_the_file(tmp_path: Path) -> None:
    config = load(tmp_path, 'state_dir = "/nowhere"\n' + TARGET, state_dir=tmp_path / "x")
    assert config.state_dir == tmp_path / "x"
    assert config.targets[0].luns[0].path.parent.parent == tmp_path / "x"


def test_default_config_matches_the_readme(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    (target,) = config.targets
    assert target.name == "iqn.2026-11.org.targetd:default"
    assert [(lun.lun, lun.size, lun.path) for lun in target.luns] == [
        (0, GiB, tmp_path / "lun0.img"),
        (1, GiB, tmp_path / "lun1.img"),
        (2, 8 * GiB, tmp_path / "tape0.img"),
    ]
    assert [lun.kind for lun in target.luns] == ["block", "block", "tape"]
    assert config.portals[0].advertised == "127.0.0.1:3260"


DOCS = Path(__file__).resolve().parents[2] / "docs"


def _docs_configurations() -> list[tuple[str, str]]:
    """(page#n, text) of every ```toml block in docs/: each is a whole configuration a user
    can give to ``targetd serve --config FILE`` as it is, not a fragment to fit in."""
    found = []
    for page in sorted(DOCS.glob("*.md")):
        blocks = re.findall(r"^```toml\n(.*?)^```", page.read_text(), re.S | re.M)
        found += [(f"{page.name}#{n}", block) for n, block in enumerate(blocks)]
    return found


@pytest.mark.parametrize(("where", "text"), _docs_configurations())
def test_every_configuration_in_the_docs_loads(tmp_path: Path, where: str, text: str) -> None:
    """A user copies these as they are (docs/tape.md's library, docs/config.md's pairs, ...):
    the daemon's own loader accepts each, and each serves at least one target."""
    config = load(tmp_path, text)
    assert config.targets, where


def test_the_docs_show_whole_configurations() -> None:
    """The pages that show configurations still do (a renamed fence would skip them)."""
    counts: dict[str, int] = {}
    for where, _ in _docs_configurations():
        page = where.split("#")[0]
        counts[page] = counts.get(page, 0) + 1
    assert counts["tape.md"] == 4 and counts["config.md"] == 3
    assert {"alua.md", "backup.md", "operations.md", "rbd.md", "workers.md"} <= counts.keys()
    # A TOML example under another fence would escape the check above.
    for page in sorted(DOCS.glob("*.md")):
        for fence, body in re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), re.S | re.M):
            assert fence == "toml" or not re.search(r"^\[\[?target", body, re.M), page.name


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('colour = "blue"\n' + TARGET, "colour", "unknown key"),
        (TARGET + 'sise = "1GiB"\n', "target[0].lun[0].sise", "unknown key"),
        ("[limits]\nmax_session = 3\n" + TARGET, "limits.max_session", "unknown key"),
        ('[[portal]]\nlisten = "127.0.0.1:1"\nport = 3\n' + TARGET, "portal[0].port", "unknown"),
        ("", "target", "at least one"),
        ('[[target]]\nname = "iqn.2026-11.org.example:t"\n', "target[0].lun", "at least one"),
        ("[[target]]\n[[target.lun]]\nlun = 0\n", "target[0].name", "missing"),
        (
            '[[target]]\nname = "iqn.2026-11.org.x:t"\n[[target.lun]]\n',
            "target[0].lun[0].lun",
            "missing",
        ),
        ("state_dir = 3\n" + TARGET, "state_dir", "expected str"),
        (NO_LUN_NUMBER + "lun = true\n", "target[0].lun[0].lun", "expected int"),
        (NO_LUN_NUMBER + "lun = 16384\n", "target[0].lun[0].lun", "0..16383"),
        (TARGET + "read_only = 1\n", "target[0].lun[0].read_only", "expected bool"),
        (TARGET + 'kind = "cdrom"\n', "target[0].lun[0].kind", "block, tape"),
        (TARGET + "block_size = 1024\n", "target[0].lun[0].block_size", "512 or 4096"),
        (TARGET + 'size = "1GB"\n', "target[0].lun[0].size", "expected a size"),
        (TARGET + "size = 0\n", "target[0].lun[0].size", "positive"),
        (TARGET + "size = 1000\n", "target[0].lun[0].size", "multiple of block_size"),
        (TARGET + 'product = "A-PRODUCT-NAME-TOO-LONG"\n', "target[0].lun[0].product", "16"),
        (TARGET + 'path = ""\n', "target[0].lun[0].path", "empty"),
        (TARGET + "[[target.lun]]\nlun = 0\n", "target[0].lun[1].lun", "already defined"),
        (TARGET + TARGET, "target[1].name", "already defined by target[0]"),
        (
            TARGET + 'path = "a.img"\n[[target.lun]]\nlun = 1\npath = "a.img"\n',
            "target[0].lun[1].path",
            "already used by target[0].lun[0].path",
        ),
        ('[[target]]\nname = "iqn.2026-11.Org.Example:x"\n', "target[0].name", "not an iSCSI"),
        ('[[target]]\nname = "iqn.2026-13.org.example"\n', "target[0].name", "not an iSCSI"),
        ('[[target]]\nname = "disk1"\n', "target[0].name", "not an iSCSI"),
        ("[[target]]\nname = 7\n", "target[0].name", "expected an iSCSI name"),
        (
            TARGET.replace("[[target.lun]]", 'allowed_initiators = ["eui.123"]\n[[target.lun]]'),
            "target[0].allowed_initiators[0]",
            "not an iSCSI",
        ),
        (
            TARGET.replace(
                "[[target.lun]]", 'allowed_initiators = "iqn.2026-11.a.b"\n[[target.lun]]'
            ),
            "target[0].allowed_initiators",
            "expected an array",
        ),
        ("[[portal]]\n" + TARGET, "portal[0].listen", "missing"),
        ('[[portal]]\nlisten = "127.0.0.1:0"\n' + TARGET, "portal[0].listen", "1..65535"),
        ('[[portal]]\nlisten = "127.0.0.1:70000"\n' + TARGET, "portal[0].listen", "1..65535"),
        ('[[portal]]\nlisten = "::1:3260"\n' + TARGET, "portal[0].listen", "brackets"),
        ('[[portal]]\nlisten = "h:1"\nadvertise = "x:y"\n' + TARGET, "portal[0].advertise", "port"),
        ('[[portal]]\nlisten = "h:1"\ntpgt = 0\n' + TARGET, "portal[0].tpgt", "1..65535"),
        (
            '[[portal]]\nlisten = "h:1"\n[[portal]]\nlisten = "h:1"\n' + TARGET,
            "portal[1].listen",
            "twice",
        ),
        ("portal = 3\n" + TARGET, "portal", "expected an array"),
        ("[limits]\nmax_burst_length = 256\n" + TARGET, "limits.max_burst_length", "512.."),
        ('[limits]\nmax_burst_length = "32MiB"\n' + TARGET, "limits.max_burst_length", "512.."),
        (
            "[limits]\nmax_burst_length = 8192\nfirst_burst_length = 65536\n" + TARGET,
            "limits.first_burst_length",
            "must not exceed",
        ),
        ("[limits]\nmax_outstanding_r2t = 0\n" + TARGET, "limits.max_outstanding_r2t", "1..65535"),
        ("limits = 5\n" + TARGET, "limits", "expected a table"),
        ('[limits]\nbuffers_total = "1MiB"\n' + TARGET, "limits.buffers_total", "67108864.."),
        (
            '[limits]\nbuffers_total = "256MiB"\nbuffers_per_session = "512MiB"\n' + TARGET,
            "limits.buffers_per_session",
            "must not exceed buffers_total",
        ),
        ('[discovery]\nchap = "x"\n' + TARGET, "discovery.chap", "expected a table"),
        (
            '[discovery]\nchap = { user = "a", secret = "short" }\n' + TARGET,
            "discovery.chap.secret",
            "12..255 bytes",
        ),
        (
            '[discovery]\nchap = { user = "", secret = "long-enough-secret" }\n' + TARGET,
            "discovery.chap.user",
            "1..255",
        ),
        (
            '[discovery]\nchap = { user = "a", secret = "long-enough-secret", x = 1 }\n' + TARGET,
            "discovery.chap.x",
            "unknown key",
        ),
        (
            '[discovery]\nmutual_chap = { user = "a", secret = "long-enough-secret" }\n' + TARGET,
            "discovery.mutual_chap",
            "needs discovery.chap",
        ),
        (
            TARGET.replace(
                "[[target.lun]]",
                'chap = { user = "a", secret = "same-secret-123" }\n'
                'mutual_chap = { user = "b", secret = "same-secret-123" }\n[[target.lun]]',
            ),
            "target[0].mutual_chap.secret",
            "must differ",
        ),
        ("[[target]\n", "config", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    err = error(tmp_path, text)
    assert err.key == key, err
    assert problem in err.problem, err
    assert str(err).startswith(f"{key}: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.key == "config"
    assert "absent.toml" in info.value.problem


def test_chap_secret_limits(tmp_path: Path) -> None:
    def chap(secret: str) -> str:
        return TARGET.replace(
            "[[target.lun]]", f'chap = {{ user = "u", secret = "{secret}" }}\n[[target.lun]]'
        )

    assert load(tmp_path, chap("x" * 12)).targets[0].chap == ChapSecret("u", "x" * 12)
    assert load(tmp_path, chap("x" * 255)).targets[0].chap is not None
    assert error(tmp_path, chap("x" * 11)).key == "target[0].chap.secret"
    assert error(tmp_path, chap("x" * 256)).key == "target[0].chap.secret"


def test_secrets_stay_out_of_repr() -> None:
    assert "hunter2hunter2" not in repr(ChapSecret("u", "hunter2hunter2"))


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("iqn.2026-11.org.targetd:default", True),
        ("iqn.1994-05.com.redhat:01:abc123", True),
        ("iqn.2001-04.com.example", True),
        ("iqn.2001-04.com.example:storage.disk2.sys1.xyz", True),
        ("eui.02004567A425678D", True),
        ("naa.52004567BA64678D", True),
        ("naa.6001405abcdef0123456789abcdef012", True),
        ("iqn.2001-04.com.Example", False),
        ("iqn.2001-4.com.example", False),
        ("iqn.2001-00.com.example", False),
        ("iqn.2001-04.-com.example", False),
        ("iqn.2001-04.com.example:has space", False),
        ("iqn.2001-04", False),
        ("eui.02004567A425678", False),
        ("naa.52004567BA64678D00", False),
        ("iqn.2001-04.com.example:" + "x" * 200, False),
        ("", False),
    ],
)
def test_iscsi_names(name: str, valid: bool) -> None:
    assert is_valid_iscsi_name(name) is valid


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * MiB),
        ("1GiB", GiB),
        ("2 TiB", 2 << 40),
        ("8KiB", 8192),
        ("100B", 100),
    ],
)
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value, "k") == size


@pytest.mark.parametrize("value", ["1G", "1.5GiB", "-1", "GiB", True, 1.0, None, "1gib"])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(value, "k")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3261", ("127.0.0.1", 3261)),
        ("localhost", ("localhost", 3260)),
        ("[::1]:3262", ("::1", 3262)),
        ("[::1]", ("::1", 3260)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, "--listen") == expected


@pytest.mark.parametrize("text", ["", ":3260", "h:", "h:0", "h:65536", "::1", "[::1:3", "a b:1"])
def test_bad_hostport(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_hostport(text, "--listen")
    assert info.value.key == "--listen"


def test_relative_state_dirs_are_made_absolute_once(tmp_path: Path, monkeypatch) -> None:
    """The default configuration used to name var/targetd/var/targetd/lun0.img, and a
    relative --state-dir was applied twice (st/st/a.img)."""
    monkeypatch.chdir(tmp_path)
    config = default_config(Path("var/targetd"))
    assert config.state_dir == tmp_path / "var/targetd"
    assert [lun.path for lun in config.targets[0].luns] == [
        tmp_path / "var/targetd/lun0.img",
        tmp_path / "var/targetd/lun1.img",
        tmp_path / "var/targetd/tape0.img",
    ]
    (tmp_path / "etc").mkdir()
    text = TARGET + 'path = "a.img"\n'
    config = load(tmp_path / "etc", text, state_dir=Path("st"))
    assert config.state_dir == tmp_path / "st"
    assert config.targets[0].luns[0].path == tmp_path / "st/a.img"
    # In the file, a relative state_dir is the config file's directory's.
    config = load(tmp_path / "etc", 'state_dir = "s"\n' + text)
    assert config.targets[0].luns[0].path == tmp_path / "etc/s/a.img"


def test_read_only_lun_whose_image_is_missing_names_the_key(tmp_path: Path) -> None:
    text = TARGET + 'read_only = true\npath = "gone.img"\n'
    text = TARGET + "[[target.lun]]\nlun = 1\n" + text.split("lun = 0\n")[1]
    config = load(tmp_path, text, state_dir=tmp_path / "s")
    with pytest.raises(ConfigError) as info:
        check_images(config)
    assert info.value.key == "target[0].lun[1].path"
    assert "gone.img" in info.value.problem and "does not exist" in info.value.problem
    config.targets[0].luns[1].path.parent.mkdir(parents=True)
    config.targets[0].luns[1].path.write_bytes(bytes(1024))
    check_images(config)


ALUA = (
    """
[[portal]]
listen = "127.0.0.1:3260"
[[portal]]
listen = "127.0.0.1:3261"
tpgt = 2
port_group = 2
[[portal]]
listen = "127.0.0.2:3261"
tpgt = 2
port_group = 2
[[port_group]]
id = 2
state = "standby"
preferred = true
[[port_group]]
id = 9
state = "unavailable"
"""
    + TARGET
)


def test_port_groups_and_the_alua_table_built_from_them(tmp_path: Path) -> None:
    from scsi.alua import AccessState, PortGroup
    from targetd.config import PortGroupConfig
    from targetd.luns import alua_groups

    config = load(tmp_path, ALUA)
    assert [p.port_group for p in config.portals] == [1, 2, 2]
    assert config.port_groups == (
        PortGroupConfig(2, "standby", True),
        PortGroupConfig(9, "unavailable", False),
    )
    # Group 1 is named by a portal only: active/optimized. Group 9 has no port yet.
    assert alua_groups(config) == [
        PortGroup(1, AccessState.ACTIVE_OPTIMIZED, (1,)),
        PortGroup(2, AccessState.STANDBY, (2,), preferred=True),
        PortGroup(9, AccessState.UNAVAILABLE, ()),
    ]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[[port_group]]\nid = 1\nstate = "asleep"\n' + TARGET, "port_group[0].state", "one of"),
        ('[[port_group]]\nstate = "standby"\n' + TARGET, "port_group[0].id", "missing"),
        ("[[port_group]]\nid = 3\n[[port_group]]\nid = 3\n" + TARGET, "port_group[1].id", "twice"),
        (
            '[[portal]]\nlisten = "127.0.0.1:1"\n[[portal]]\nlisten = "127.0.0.1:2"\n'
            "port_group = 2\n" + TARGET,
            "portal[1].port_group",
            "tpgt 1 is already in port group 1",
        ),
        ('[[portal]]\nlisten = "127.0.0.1:1"\nport_group = 0\n' + TARGET, "portal[0].port_group",
         ""),
    ],
)  # fmt: skip
def test_port_group_errors_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    err = error(tmp_path, text)
    assert err.key == key, err
    assert problem in err.problem, err


RBD_TARGET = """
[[target]]
name = "iqn.2026-11.org.example:gw"
[[target.lun]]
lun = 0
kind = "rbd"
pool = "rbd"
image = "vol"
"""
GATEWAY = """
[[portal]]
listen = "127.0.0.1:3260"
tpgt = 1
port_group = 1
[gateway]
hold_ms = 250
[[gateway.peer]]
portal = "127.0.0.2:3260"
tpgt = 2
port_group = 2
"""


def test_gateway_table_and_the_peer_portals_sendtargets_advertises(tmp_path: Path) -> None:
    from targetd.config import GatewayConfig, PeerPortal
    from targetd.iscsi_settings import build

    config = load(tmp_path, GATEWAY + RBD_TARGET)
    assert config.gateway == GatewayConfig((PeerPortal("127.0.0.2:3260", 2, 2),), 250, 3000)
    assert [(p.advertised, p.tpgt) for p in build(config).portals] == [
        ("127.0.0.1:3260", 1),
        ("127.0.0.2:3260", 2),
    ]


PEER = '[[gateway.peer]]\nportal = "127.0.0.2:3260"\ntpgt = 2\nport_group = 2\n'


def test_a_gateway_serves_tapes_and_file_sinks_of_its_own_beside_rbd_luns(tmp_path: Path) -> None:
    own = (
        '[[target.lun]]\nlun = 1\nkind = "tape"\npath = "t.img"\nsize = "64MiB"\n'
        '[[target.lun]]\nlun = 2\nkind = "filesink"\npath = "sink"\ncapacity = "64MiB"\n'
    )
    config = load(tmp_path, GATEWAY + RBD_TARGET + own)
    assert [lun.kind for lun in config.targets[0].luns] == ["rbd", "tape", "filesink"]


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[gateway]\n" + RBD_TARGET, "gateway.peer", "missing"),
        ('[gateway]\n[[gateway.peer]]\nportal = "127.0.0.2:3260"\ntpgt = 2\n' + RBD_TARGET,
         "gateway.peer[0].port_group", "missing"),
        ('[gateway]\n[[gateway.peer]]\nportal = "127.0.0.2:3260"\ntpgt = 1\nport_group = 2\n'
         + RBD_TARGET, "gateway.peer[0].tpgt", "relative target port ids must differ"),
        ('[gateway]\n[[gateway.peer]]\nportal = "127.0.0.2:3260"\ntpgt = 2\nport_group = 1\n'
         + RBD_TARGET, "gateway.peer[0].port_group", "this gateway's own"),
        ("[gateway]\n" + PEER + '[[gateway.peer]]\nportal = "127.0.0.3:3260"\ntpgt = 3\n'
         "port_group = 3\n" + RBD_TARGET, "gateway.peer[1].port_group", "two gateways"),
        ('[[port_group]]\nid = 2\nstate = "standby"\n[gateway]\n' + PEER + RBD_TARGET,
         "port_group[0].state", "follow the image's lock"),
        ("[gateway]\n" + PEER + TARGET, "target[0].lun[0].kind", 'a disk on a gateway is kind'),
        ("[gateway]\n" + PEER + RBD_TARGET + 'cache = "writeback"\n', "target[0].lun[0].cache",
         'cache = "none"'),
        ("[gateway]\n" + PEER + RBD_TARGET + 'cache = "writearound"\n',
         "target[0].lun[0].cache", 'with "writearound" librbd acknowledges writes before'),
        ('[[portal]]\nlisten = "127.0.0.1:1"\n[[portal]]\nlisten = "127.0.0.1:2"\ntpgt = 3\n'
         "port_group = 3\n[gateway]\n" + PEER + RBD_TARGET, "portal", "one port_group"),
        ("[gateway]\nhold_ms = -1\n" + PEER + RBD_TARGET, "gateway.hold_ms", "0..60000"),
    ],
)  # fmt: skip
def test_gateway_errors_name_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    err = error(tmp_path, text)
    assert err.key == key, err
    assert problem in err.problem, err
