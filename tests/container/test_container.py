"""The container tier: build the top-level Dockerfile unchanged, run it, use it, restart it.

No registry is reachable, so ``build-images.sh`` makes a Debian 12 base with debootstrap
(cached in .cache/container/) and a CI-only Python layer, then builds the Dockerfile with
``--build-arg BASE=``. The container runs with the host's network and a state directory
bound from the test's temporary directory; libiscsi clients (iscsi-inq, and QEMU's
libiscsi-based iscsi:// driver through qemu-io) log in on 127.0.0.1.
About a minute cold, a few seconds once the base images exist.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import run
from conftest import DEFAULT_IQN, REPO, free_port

pytestmark = pytest.mark.container

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "CONTAINERS_CONF": str(HERE / "containers.conf")}
# The image refuses to serve without CHAP: the tests give it credentials as a user would.
CHAP_USER, CHAP_SECRET = "container-host", "container-secret-1"


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=ENV,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    proc = subprocess.run(
        ["bash", str(HERE / "build-images.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"build-images.sh exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    return proc.stdout.strip().splitlines()[-1]


def run_argv(name: str, image: str, state: Path, port: int, env: dict[str, str]) -> list[str]:
    argv = ["run", "--name", name, "--network=host"]
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    argv += ["-v", f"{state}:/var/lib/targetd", image]
    argv += ["--config", "/etc/targetd/targetd.toml", "--state-dir", "/var/lib/targetd"]
    return [*argv, "--listen", f"127.0.0.1:{port}"]


class Container:
    def __init__(self, image: str, state: Path, port: int) -> None:
        self.name = f"targetd-test-{uuid.uuid4().hex[:10]}"
        self.port = port
        env = {"TARGETD_CHAP_USER": CHAP_USER, "TARGETD_CHAP_SECRET": CHAP_SECRET}
        argv = run_argv(self.name, image, state, port, env)
        podman(argv[0], "-d", *argv[1:])

    def url(self, lun: int = 0, *, auth: bool = True) -> str:
        creds = f"{CHAP_USER}%{CHAP_SECRET}@" if auth else ""
        return f"iscsi://{creds}127.0.0.1:{self.port}/{DEFAULT_IQN}/{lun}"

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_listening(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"the container does not listen on {self.port}:\n{self.logs()}")


@pytest.fixture
def container(image: str, tmp_path: Path) -> Iterator[Container]:
    state = tmp_path / "state"
    state.mkdir()
    c = Container(image, state, free_port())
    try:
        c.wait_listening()
        yield c
    finally:
        podman("rm", "-f", "-t", "10", c.name, check=False)


def qemu_io(url: str, command: str) -> str:
    out = run("qemu-io", "-f", "raw", "-c", command, url).stdout
    assert "failed" not in out.lower(), out
    return out


def test_data_survives_a_container_restart(container: Container) -> None:
    inq = run("iscsi-inq", container.url(0)).stdout
    assert "Peripheral Device Type:DIRECT_ACCESS" in inq
    # Without the credentials the login is refused.
    refused = run("iscsi-inq", container.url(0, auth=False), check=False)
    assert refused.returncode != 0, refused.stdout
    out = qemu_io(container.url(0), "write -P 0x5c 1M 1M")
    assert "wrote 1048576/1048576 bytes at offset 1048576" in out

    stopped = time.monotonic()
    podman("restart", "-t", "20", container.name)
    # SIGTERM drains and exits 0: the restart did not need a SIGKILL.
    assert time.monotonic() - stopped < 15, container.logs()
    container.wait_listening()

    out = qemu_io(container.url(0), "read -P 0x5c 1M 1M")
    assert "read 1048576/1048576 bytes at offset 1048576" in out
    logs = container.logs()
    assert "event=drained" in logs and "event=stopped" in logs, logs


def test_healthcheck_and_targetctl_in_the_container(container: Container) -> None:
    health = podman("healthcheck", "run", container.name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    proc = podman("exec", container.name, "targetctl", "status", "--json")
    status = json.loads(proc.stdout)
    assert status["listening"] == [f"127.0.0.1:{container.port}"]
    assert [lun["lun"] for lun in status["luns"]] == [0, 1]
    # The image carries the s3 extra, so a tape library on S3 works in it.
    boto = podman("exec", container.name, "python3", "-c", "import boto3; print('ok')")
    assert boto.stdout.strip() == "ok", boto.stdout + boto.stderr
    inspect = json.loads(podman("image", "inspect", container_image(container)).stdout)[0]
    config = inspect["Config"]
    assert config["Entrypoint"] == ["targetd", "serve", "--require-chap"]
    assert "3260/tcp" in config["ExposedPorts"]
    assert "/var/lib/targetd" in config["Volumes"]


def test_image_refuses_to_serve_without_chap(image: str, tmp_path: Path) -> None:
    """With no credentials and no opt-out, the container exits 2 and says what to set."""
    name = f"targetd-test-{uuid.uuid4().hex[:10]}"
    try:
        proc = podman(*run_argv(name, image, tmp_path, free_port(), {}), check=False, timeout=60)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        out = proc.stdout + proc.stderr
        assert "target[0].chap" in out and "TARGETD_CHAP_SECRET" in out, out
        assert "TARGETD_ALLOW_NO_CHAP" in out, out
    finally:
        podman("rm", "-f", name, check=False)


def container_image(container: Container) -> str:
    return podman("inspect", "-f", "{{.ImageName}}", container.name).stdout.strip()
