"""Hypothesis strategies for the servers' property tests: valid but unusual images (1 to 8,000 px
per side, aspect ratios up to 1:4,000, every accepted format in the modes it can hold), sent
whole, truncated or padded, and the check every answer must pass: 200 with the task's answer, or
a 4xx naming the problem; never a 5xx.

Examples are derandomized (the same ones on every run, so CI is never red by chance); run with
HYPOTHESIS_EXPLORE=1 for fresh examples."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import requests
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

# Pillow modes each accepted format can store (what a user's tool may have written)
MODES = {
    "PNG": ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "WEBP": ["RGB", "RGBA"],
    "BMP": ["1", "L", "P", "RGB"],
    "GIF": ["L", "P"],
    "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"],
}
MAX_SIDE = 8000
MAX_ASPECT = 4000
PROPERTY_SETTINGS = settings(
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "40")),
    deadline=None,  # a 40-MP image takes seconds to encode and answer
    derandomize=not os.environ.get("HYPOTHESIS_EXPLORE"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Body:
    data: bytes
    content_type: str
    size: tuple[int, int]  # the image's (width, height)
    fmt: str
    mode: str
    damage: str  # "none", "truncated" or "padded"


@st.composite
def image_sizes(draw) -> tuple[int, int]:
    """(width, height): the longer side up to MAX_SIDE, the other at least 1/MAX_ASPECT of it."""
    long = draw(st.integers(1, MAX_SIDE))
    short = draw(st.integers(max(1, -(-long // MAX_ASPECT)), long))
    return (long, short) if draw(st.booleans()) else (short, long)


def encode(size: tuple[int, int], fmt: str, mode: str, shade: int) -> bytes:
    """A flat image with a lighter block (cheap to encode at any size, not blank)."""
    image = Image.new("RGB", size, (shade, 255 - shade, 90))
    w, h = size
    image.paste((250, 250, 250), (w // 4, h // 4, max(w // 4 + 1, 3 * w // 4), max(h // 4 + 1, 3 * h // 4)))
    image = image.convert(mode) if mode not in ("I;16",) else image.convert("I").convert("I;16")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def image_bodies(draw) -> Body:
    fmt = draw(st.sampled_from(sorted(MODES)))
    mode = draw(st.sampled_from(MODES[fmt]))
    size = draw(image_sizes())
    data = encode(size, fmt, mode, draw(st.integers(0, 255)))
    damage = draw(st.sampled_from(["none", "none", "truncated", "padded"]))
    if damage == "truncated":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "padded":
        data += draw(st.binary(min_size=1, max_size=64))
    content_type = draw(st.sampled_from([f"image/{fmt.lower()}", "application/octet-stream"]))
    return Body(data, content_type, size, fmt, mode, damage)


def post_body(url: str, body: Body) -> requests.Response:
    return requests.post(
        f"{url}/v1/predict", data=body.data, headers={"content-type": body.content_type}, timeout=120
    )


def check_answer(response: requests.Response, body: Body, task: str) -> None:
    """200 with the task's answer at the image's size, or a 4xx with its reason; never 5xx."""
    width, height = body.size
    where = f"{task}: {body.fmt} {body.mode} {width}x{height} ({body.damage}, {len(body.data)} bytes)"
    assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:300]}"
    answer = response.json()
    if response.status_code != 200:
        assert 400 <= response.status_code < 500 and answer.get("error"), f"{where}: {answer}"
        return
    if task == "classification":
        assert answer["predictions"], where
    else:
        assert (answer["width"], answer["height"]) == (width, height), where
