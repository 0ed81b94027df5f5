"""Archive throughput and memory: `worker.archiver.archive_image` vs a minimal stream-to-S3 script,
for images (1, 10, 100 MB) and a video (1 GiB; 10 MB in smoke mode).

Each (kind, size, mode) runs in a fresh child process (bench/archive_child.py) so its peak RSS is
its own; the simulator (serving the padded PNGs and MP4s) and moto run in their own processes too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench import infra
from bench.context import Context
from bench.report import BenchResult, Figure
from kling import ImageRequest
from kling.client import KlingClient
from kling.simulator.remote import SimulatorRemote

MiB = 1024 * 1024
CHILD_TIMEOUT = 600


def _image_url(client: KlingClient, sim: SimulatorRemote, size: int) -> str:
    """A finished simulator task whose image is `size` bytes (size is fixed when a task is created)."""
    sim.configure(image_bytes=size)
    task = client.create_image(ImageRequest.from_params({"prompt": f"archive {size}", "n": 1}))
    deadline = time.monotonic() + 30
    while True:
        info = sim.task(task.task_id)
        if info["status"] == "succeed":
            return str(info["task_object"]["task_result"]["images"][0]["url"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulator task {task.task_id} not finished: {info['status']}")
        time.sleep(0.05)  # polling interval of a deadline loop


def _video_url(client: KlingClient, sim: SimulatorRemote, size: int) -> str:
    """A finished simulator text-to-video task whose MP4 is about `size` bytes."""
    sim.configure(video_bytes=size)
    task = client.create_task("text_to_video", {"prompt": f"archive {size}", "duration": "5"})
    deadline = time.monotonic() + 30
    while True:
        info = sim.task(task.task_id)
        if info["status"] == "succeed":
            return str(info["task_object"]["task_result"]["videos"][0]["url"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"simulator task {task.task_id} not finished: {info['status']}")
        time.sleep(0.05)  # polling interval of a deadline loop


def _child(
    mode: str, url: str, warm: str, *, ctx: Context, bucket: str, repeats: int, output_type: str = "image"
) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.archive_child", mode, "--url", url, "--warm-url", warm]
    cmd += ["--endpoint", ctx.s3_endpoint, "--bucket", bucket, "--repeats", str(repeats)]
    cmd += ["--output-type", output_type]
    env = {**infra.settings_env(infra.bench_settings()), "PYTHONPATH": str(infra.ROOT)}
    out = subprocess.run(
        cmd, cwd=infra.ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"archive child {mode} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(ctx: Context) -> BenchResult:
    plan = [(1 * MiB, 2), (10 * MiB, 1)] if ctx.smoke else [(1 * MiB, 10), (10 * MiB, 4), (100 * MiB, 2)]
    videos = [(10 * MiB, 1)] if ctx.smoke else [(1024 * MiB, 1)]
    res = BenchResult("archive", 0.0)
    bucket = infra.new_bucket(ctx.s3_endpoint)
    runs: dict[str, dict[str, dict[str, float]]] = {}
    with infra.simulator(concurrency=5, task_seconds=0.2) as sim_url:
        sim = SimulatorRemote(sim_url)
        client = KlingClient(access_key=infra.ACCESS_KEY, secret_key=infra.SECRET_KEY, base_url=sim_url)
        warm = _image_url(client, sim, 256 * 1024)
        for size, repeats in plan:
            url = _image_url(client, sim, size)
            runs[f"{size // MiB} MB"] = {
                mode: _child(mode, url, warm, ctx=ctx, bucket=bucket, repeats=repeats)
                for mode in ("baseline", "service")
            }
        warm_video = _video_url(client, sim, 256 * 1024)
        for size, repeats in videos:
            url = _video_url(client, sim, size)
            runs[f"video {size // MiB} MB"] = {
                mode: _child(
                    mode, url, warm_video, ctx=ctx, bucket=bucket, repeats=repeats, output_type="video"
                )
                for mode in ("baseline", "service")
            }
        sim.close()
    # Memory is bounded whatever the size: the largest image and every video are held to 64 MiB.
    bounded = {f"{plan[-1][0] // MiB} MB"} | {f"video {size // MiB} MB" for size, _ in videos}
    for label, by_mode in runs.items():
        svc, base = by_mode["service"], by_mode["baseline"]
        res.figures.append(
            Figure(
                "archive",
                f"throughput {label}",
                svc["bytes"] / svc["seconds"] / MiB,
                "MB/s",
                base["bytes"] / base["seconds"] / MiB,
                ">=",
                0.8,
                on="ratio",
            )
        )
        target = ("<=", 64.0) if label in bounded else (None, None)
        res.figures.append(
            Figure(
                "archive", f"peak RSS growth {label}", svc["growth_mib"], "MiB", base["growth_mib"], *target
            )
        )
    res.details = {"runs": runs}
    return res
