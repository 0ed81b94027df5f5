"""What every benchmark gets: the mode and the shared S3 endpoint."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Context:
    smoke: bool
    s3_endpoint: str
    # `--scale-jobs`: jobs seeded by the scale benchmark (None: its own default).
    scale_jobs: int | None = None
