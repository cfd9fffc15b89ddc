"""CHAP, mutual CHAP, discovery CHAP and initiator ACLs, seen from libiscsi clients."""

from __future__ import annotations

import pytest
from clients import run
from conftest import Daemon, DaemonFactory

IQN = "iqn.2026-11.org.targetd.test:secure"
USER, SECRET = "alice", "alice-secret-1"
TARGET_USER, TARGET_SECRET = "targetd", "target-secret-2"
ALLOWED = "iqn.2026-11.org.targetd.test:allowed-host"
OTHER = "iqn.2026-11.org.targetd.test:other-host"

LUN = """
[[target.lun]]
lun = 0
size = "16MiB"
"""


def config(*, chap: bool = False, mutual: bool = False, acl: bool = False) -> str:
    text = f'[[target]]\nname = "{IQN}"\n'
    if acl:
        text += f'allowed_initiators = ["{ALLOWED}"]\n'
    if chap:
        text += f'chap = {{ user = "{USER}", secret = "{SECRET}" }}\n'
    if mutual:
        text += f'mutual_chap = {{ user = "{TARGET_USER}", secret = "{TARGET_SECRET}" }}\n'
    return text + LUN


def inq(url: str, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = run("iscsi-inq", *extra, url, check=False, env=env)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def chap_daemon(targetd_factory: DaemonFactory) -> Daemon:
    return targetd_factory(config(chap=True))


def test_chap_right_secret_logs_in(chap_daemon: Daemon) -> None:
    status, out = inq(chap_daemon.url(0, user=USER, secret=SECRET))
    assert status == 0, out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out


def test_chap_wrong_secret_is_refused(chap_daemon: Daemon) -> None:
    status, out = inq(chap_daemon.url(0, user=USER, secret="not-the-secret"))
    assert status != 0, out
    assert "Login Failed" in out, out


def test_chap_wrong_user_is_refused(chap_daemon: Daemon) -> None:
    status, out = inq(chap_daemon.url(0, user="mallory", secret=SECRET))
    assert status != 0, out


def test_login_without_chap_is_refused(chap_daemon: Daemon) -> None:
    status, out = inq(chap_daemon.url(0))
    assert status != 0, out
    assert "Login Failed" in out, out


def test_daemon_survives_failed_logins(chap_daemon: Daemon) -> None:
    for _ in range(3):
        inq(chap_daemon.url(0, user=USER, secret="bad-secret-xx"))
    status, out = inq(chap_daemon.url(0, user=USER, secret=SECRET))
    assert status == 0, out


@pytest.fixture
def mutual_daemon(targetd_factory: DaemonFactory) -> Daemon:
    return targetd_factory(config(chap=True, mutual=True))


def test_mutual_chap_target_proves_itself(mutual_daemon: Daemon) -> None:
    # libiscsi takes the target's credentials as URL arguments and checks CHAP_N and CHAP_R.
    url = mutual_daemon.url(0, user=USER, secret=SECRET)
    status, out = inq(f"{url}?target_user={TARGET_USER}&target_password={TARGET_SECRET}")
    assert status == 0, out


def test_mutual_chap_wrong_target_secret_is_detected(mutual_daemon: Daemon) -> None:
    url = mutual_daemon.url(0, user=USER, secret=SECRET)
    env = {
        "LIBISCSI_CHAP_TARGET_USERNAME": TARGET_USER,
        "LIBISCSI_CHAP_TARGET_PASSWORD": "some-other-secret",
    }
    status, out = inq(url, env=env)
    assert status != 0, out
    assert "CHAP_R" in out or "Authentication" in out, out


def test_mutual_chap_is_optional_for_the_initiator(mutual_daemon: Daemon) -> None:
    # An initiator that does not ask the target to authenticate still logs in with CHAP.
    status, out = inq(mutual_daemon.url(0, user=USER, secret=SECRET))
    assert status == 0, out


@pytest.fixture
def acl_daemon(targetd_factory: DaemonFactory) -> Daemon:
    return targetd_factory(config(acl=True))


def test_acl_accepts_a_listed_initiator(acl_daemon: Daemon) -> None:
    status, out = inq(acl_daemon.url(0), "-i", ALLOWED)
    assert status == 0, out


def test_acl_refuses_an_unlisted_initiator(acl_daemon: Daemon) -> None:
    status, out = inq(acl_daemon.url(0), "-i", OTHER)
    assert status != 0, out
    assert "Login Failed" in out, out


def test_acl_hides_the_target_from_discovery(acl_daemon: Daemon) -> None:
    # RFC 7143 4.3: SendTargets returns only targets the initiator may access.
    listed = run("iscsi-ls", "-i", ALLOWED, acl_daemon.url(None)).stdout
    assert IQN in listed
    hidden = run("iscsi-ls", "-i", OTHER, acl_daemon.url(None), check=False)
    assert IQN not in hidden.stdout, hidden.stdout


def test_discovery_chap(targetd_factory: DaemonFactory) -> None:
    daemon = targetd_factory(
        '[discovery]\nchap = { user = "scout", secret = "discovery-secret" }\n' + config()
    )
    ok = run("iscsi-ls", daemon.url(None, user="scout", secret="discovery-secret"))
    assert IQN in ok.stdout
    refused = run("iscsi-ls", daemon.url(None), check=False)
    assert refused.returncode != 0, refused.stdout
    assert IQN not in refused.stdout
    # discovery credentials are not target credentials: the target itself has no CHAP
    status, out = inq(daemon.url(0))
    assert status == 0, out


def test_credentials_in_the_url_log_in_to_a_target_without_chap(
    targetd_factory: DaemonFactory,
) -> None:
    # libiscsi then offers CHAP,None and repeats InitiatorName and TargetName in the
    # operational stage; the repeated keys carry the same values and are accepted.
    d = targetd_factory(config())
    status, out = inq(d.url(0, user=USER, secret=SECRET))
    assert status == 0, out
    assert "Peripheral Device Type:DIRECT_ACCESS" in out


def refusals(daemon: Daemon) -> list[str]:
    """The reason field of every 'closing connection' line of a refused login."""
    return [
        line.split(' reason="', 1)[1].rsplit('"', 1)[0]
        for line in daemon.stderr.splitlines()
        if 'reason="login refused' in line
    ]


def test_the_log_says_why_a_login_was_refused(targetd_factory: DaemonFactory) -> None:
    """The initiator sees only a status; the operator reads who was refused and why (the
    log said 'login refused' alone for a wrong secret, an unlisted initiator and a typo in
    the target's name alike)."""
    daemon = targetd_factory(config(chap=True, acl=True))
    assert inq(daemon.url(0, user=USER, secret="not-the-secret"), "-i", ALLOWED)[0] != 0
    assert inq(daemon.url(0, user=USER, secret=SECRET), "-i", OTHER)[0] != 0
    typo = f"iscsi://{daemon.portal}/{IQN}x/0"
    assert inq(typo, "-i", ALLOWED)[0] != 0
    assert refusals(daemon) == [
        "login refused: AUTHENTICATION_FAILURE: CHAP response for 'alice' does not verify "
        f"(initiator {ALLOWED}, target {IQN})",
        f"login refused: AUTHORIZATION_FAILURE: {OTHER} not allowed (target {IQN})",
        f"login refused: NOT_FOUND: {IQN}x (initiator {ALLOWED})",
    ]
