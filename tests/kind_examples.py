"""One valid `POST /v1/jobs` body per task kind, with the slots the registry gives it: shared by the
API tests and the end-to-end test of every kind."""

from __future__ import annotations

from typing import Any

URL = "https://example.com/in.png"
# One valid body per kind, with the slots the registry gives it.
VALID: dict[str, tuple[dict[str, Any], int]] = {
    "image": ({"prompt": "a fox", "n": 3}, 3),
    "omni_image": ({"prompt": "a fox", "result_type": "series", "series_amount": 4}, 4),
    "expand": ({"image": URL, "left_expansion_ratio": 0.5, "n": 2}, 2),
    "multi_image": ({"prompt": "a fox", "subject_image_list": [{"subject_image": URL}], "n": 2}, 2),
    "try_on": ({"human_image": URL, "cloth_image": URL}, 1),
    "text_to_video": ({"prompt": "a fox runs", "duration": "5", "mode": "std"}, 1),
    "image_to_video": ({"image": URL, "prompt": "it moves"}, 1),
    "omni_video": ({"prompt": "a fox runs", "duration": 7}, 1),
}
