"""boto3 on a thread against aiobotocore on the event loop, for the S3 tape's calls.

The same work, as an S3 tape does it, against a real S3 server (SeaweedFS ``weed mini``,
tests/s3_server.py): ``--parts`` parts of 8 MiB uploaded one after another into a
multipart upload and completed (a segment written while records stream), then ranged
GETs of 8 MiB over it (the read-ahead) and ``--small`` GETs of 16 KiB (a segment index).
boto3 runs on one worker thread, as on a drive's I/O thread, while the loop keeps a 1 ms
ticker whose worst lag is reported; aiobotocore runs on the loop itself. Rotating order,
``--repeats`` each; medians and the ratio, with the process's CPU seconds per GiB moved.

    python3 bench/s3_clients.py                 # 16 parts (128 MiB), 5 repeats
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from s3_server import ENV, S3Server  # noqa: E402

MiB = 1 << 20
PART = 8 * MiB


def boto3_work(server: S3Server, key: str, parts: int, small: int, body: bytes) -> None:
    s3 = server.client()
    bucket = server.bucket
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for n in range(1, parts + 1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=n, Body=body)["ETag"]
        done.append({"PartNumber": n, "ETag": etag})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": done}
    )
    for n in range(parts):
        rng = f"bytes={n * PART}-{(n + 1) * PART - 1}"
        assert len(s3.get_object(Bucket=bucket, Key=key, Range=rng)["Body"].read()) == PART
    for n in range(small):
        rng = f"bytes={n * 16384}-{n * 16384 + 16383}"
        s3.get_object(Bucket=bucket, Key=key, Range=rng)["Body"].read()


async def aiobotocore_work(server: S3Server, key: str, parts: int, small: int, body: bytes) -> None:
    from aiobotocore.session import get_session

    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
    ) as s3:
        bucket = server.bucket
        up = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        done = []
        for n in range(1, parts + 1):
            answer = await s3.upload_part(
                Bucket=bucket, Key=key, UploadId=up, PartNumber=n, Body=body
            )
            done.append({"PartNumber": n, "ETag": answer["ETag"]})
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": done}
        )
        for n in range(parts):
            rng = f"bytes={n * PART}-{(n + 1) * PART - 1}"
            answer = await s3.get_object(Bucket=bucket, Key=key, Range=rng)
            async with answer["Body"] as stream:
                assert len(await stream.read()) == PART
        for n in range(small):
            rng = f"bytes={n * 16384}-{n * 16384 + 16383}"
            answer = await s3.get_object(Bucket=bucket, Key=key, Range=rng)
            async with answer["Body"] as stream:
                await stream.read()


async def measured(run: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, the loop's worst lag in ms) of ``run()``."""
    worst = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst
        while not stop:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    cpu, start = time.process_time(), time.perf_counter()
    await run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    stop = True
    await tick
    return wall, cpu, worst * 1000


async def main_async(args: argparse.Namespace, server: S3Server) -> dict[str, list[tuple]]:
    body = bytes(range(256)) * (PART // 256)
    pool = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    results: dict[str, list[tuple]] = {"boto3 on a thread": [], "aiobotocore on the loop": []}
    for r in range(args.repeats):
        order = list(results)
        if r % 2:
            order.reverse()
        for name in order:
            key = f"bench/{name.split()[0]}-{r}"
            if name.startswith("boto3"):

                def run(key: str = key) -> Awaitable[None]:
                    return loop.run_in_executor(
                        pool, boto3_work, server, key, args.parts, args.small, body
                    )

            else:

                def run(key: str = key) -> Awaitable[None]:
                    return aiobotocore_work(server, key, args.parts, args.small, body)

            results[name].append(await measured(run))
    pool.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=16)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, S3Server(Path(tmp)) as server:
        results = asyncio.run(main_async(args, server))
    moved = 2 * args.parts * PART / MiB  # up and back
    print(
        f"{args.parts} x 8 MiB parts up, the same back in 8 MiB ranged GETs, "
        f"{args.small} GETs of 16 KiB; median of {args.repeats}"
    )
    print()
    print("| client | MiB/s | CPU s per GiB | worst loop lag ms | x boto3 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = statistics.median(w for w, _, _ in results["boto3 on a thread"])
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        cpu = statistics.median(c for _, c, _ in runs)
        lag = statistics.median(lag for _, _, lag in runs)
        print(
            f"| {name} | {moved / wall:.0f} | {cpu / (moved / 1024):.2f} | {lag:.1f} "
            f"| {base / wall:.2f} |"
        )


if __name__ == "__main__":
    main()
