"""One archiving process for the archive benchmark: copies `url` (an image, or a video with
`--output-type video`) into S3 `repeats` times and prints one JSON line with the time taken and its
own peak RSS growth.

Peak RSS is the kernel's high-water mark (VmHWM), reset after warm-up by writing 5 to
/proc/self/clear_refs, so imports and client set-up are not counted, only the copies.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import requests
from boto3.s3.transfer import TransferConfig

from bench import infra
from worker.archiver import archive_image
from worker.fetch import SafeFetcher

MAX_BYTES = 200 * 1024 * 1024  # images
MAX_BYTES_VIDEO = 2 * 1024**3  # ARCHIVE_MAX_BYTES_VIDEO's default


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["service", "baseline"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--warm-url", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output-type", choices=["image", "video"], default="image")
    args = parser.parse_args()

    video = args.output_type == "video"
    s3 = infra.s3_client(args.endpoint)
    fetcher = SafeFetcher(("127.0.0.1",), max_bytes=MAX_BYTES_VIDEO if video else MAX_BYTES)
    session = requests.Session()

    def copy(url: str, key: str) -> int:
        if args.mode == "service":
            # As the worker archives an image the first time (worker.archiving passes
            # reuse_existing=tried): every key here is fresh, so the LIST for an earlier copy is
            # what only a re-run does.
            obj = archive_image(
                s3,
                bucket=args.bucket,
                key_stem=key,
                url=url,
                fetcher=fetcher,
                metadata={"job-id": "bench"},
                reuse_existing=False,
                output_type=args.output_type,
            )
            return obj.bytes
        # The baseline: the shortest correct streaming copy, boto3's default transfer settings.
        with session.get(url, stream=True, timeout=(5, 60)) as resp:
            resp.raise_for_status()
            ext = ".mp4" if video else ".png"
            s3.upload_fileobj(resp.raw, args.bucket, key + ext, Config=TransferConfig())
            return int(resp.headers.get("Content-Length", 0))

    copy(args.warm_url, f"warm/{args.mode}/{time.monotonic_ns()}")
    exact = _reset_peak()
    before = _status_kib("VmRSS")
    total = 0
    start = time.perf_counter()
    for i in range(args.repeats):
        total += copy(args.url, f"bench/{args.mode}/{time.monotonic_ns()}-{i}")
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    print(
        json.dumps(
            {
                "mode": args.mode,
                "bytes": total,
                "seconds": seconds,
                "rss_before_kib": before,
                "peak_kib": peak,
                "growth_mib": max(0, peak - before) / 1024,
                "exact_peak": exact,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
