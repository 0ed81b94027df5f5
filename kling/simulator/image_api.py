"""The media side of `Simulator`: what its image and video URLs serve, and digests for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from kling.simulator import images, videos
from kling.simulator.config import SimulatorConfig
from kling.simulator.state import SimTask


class ImagesMixin:
    """Mixed into `Simulator`; takes the simulator's lock."""

    _lock: threading.RLock
    _tasks: dict[str, SimTask]
    _config: SimulatorConfig

    def now(self) -> float:
        raise NotImplementedError

    def _advance(self) -> None:
        raise NotImplementedError

    def image_stream(
        self, task_id: str, index: int, *, watermark: bool = False
    ) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of what an image URL serves; KeyError when it answers 404."""
        with self._lock:
            self._advance()
            t = self._tasks.get(task_id)
            if t is None or t.status != "succeed" or t.yields != "image" or not 0 <= index < t.image_count:
                raise KeyError(f"no image {index} for task {task_id}")
            if t.is_expired(self.now(), self._config.retention_seconds):
                raise KeyError(f"images of task {task_id} expired")
            width, height, target = t.image_spec
        base = images.base_png(f"{task_id}/{index}/{'wm' if watermark else 'raw'}", width, height)
        plan = images.padding_plan(len(base), target)
        return images.total_size(base, plan), images.stream_png(base, plan)

    def image_bytes(self, task_id: str, index: int, *, watermark: bool = False) -> bytes:
        return b"".join(self.image_stream(task_id, index, watermark=watermark)[1])

    def image_sha256(self, task_id: str, index: int, *, watermark: bool = False) -> str:
        """SHA-256 (hex) of what the image URL serves, without keeping the bytes."""
        return images.sha256_of(self.image_stream(task_id, index, watermark=watermark)[1])

    def image_size(self, task_id: str, index: int, *, watermark: bool = False) -> int:
        return self.image_stream(task_id, index, watermark=watermark)[0]


class VideosMixin:
    """Mixed into `Simulator`: what its video URLs serve (MP4, deterministic per task and index)."""

    _lock: threading.RLock
    _tasks: dict[str, SimTask]
    _config: SimulatorConfig

    def now(self) -> float:
        raise NotImplementedError

    def _advance(self) -> None:
        raise NotImplementedError

    def video_stream(
        self, task_id: str, index: int, *, watermark: bool = False
    ) -> tuple[int, Iterator[bytes]]:
        """(size, chunks) of what a video URL serves; KeyError when it answers 404."""
        with self._lock:
            self._advance()
            t = self._tasks.get(task_id)
            if t is None or t.status != "succeed" or t.yields != "video" or not 0 <= index < t.image_count:
                raise KeyError(f"no video {index} for task {task_id}")
            if t.is_expired(self.now(), self._config.retention_seconds):
                raise KeyError(f"videos of task {task_id} expired")
            target = t.video_bytes
        base = videos.base_mp4(f"{task_id}/{index}/{'wm' if watermark else 'raw'}")
        plan = videos.padding_plan(len(base), target)
        return videos.total_size(base, plan), videos.stream_mp4(base, plan)

    def video_bytes(self, task_id: str, index: int, *, watermark: bool = False) -> bytes:
        return b"".join(self.video_stream(task_id, index, watermark=watermark)[1])

    def video_sha256(self, task_id: str, index: int, *, watermark: bool = False) -> str:
        """SHA-256 (hex) of what the video URL serves, without keeping the bytes."""
        return images.sha256_of(self.video_stream(task_id, index, watermark=watermark)[1])

    def video_size(self, task_id: str, index: int, *, watermark: bool = False) -> int:
        return self.video_stream(task_id, index, watermark=watermark)[0]
