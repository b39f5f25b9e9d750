"""`vft predict`: POST images to a running server (POST /v1/predict, raw image body)."""

from __future__ import annotations

import contextlib
import mimetypes
import time
from dataclasses import dataclass
from pathlib import Path

import requests


@dataclass
class Answer:
    image: str
    status: int  # HTTP status; 0 when the server could not be reached
    body: dict

    def to_json(self) -> dict:
        return {"image": self.image, "status": self.status, **self.body}


def predict_url(url: str) -> str:
    """Accept the server's base URL or the endpoint itself."""
    url = url.rstrip("/")
    return url if url.endswith("/v1/predict") else f"{url}/v1/predict"


def wait_until_up(url: str, seconds: float) -> bool:
    """Poll GET /healthz until it answers 200 or `seconds` pass."""
    health = predict_url(url).removesuffix("/v1/predict") + "/healthz"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(health, timeout=5).status_code == 200:
                return True
        time.sleep(0.5)
    return False


def content_type(path: Path) -> str:
    kind, _ = mimetypes.guess_type(path.name)
    return kind if kind and kind.startswith("image/") else "application/octet-stream"


def predict_files(url: str, images: list[Path], timeout: float = 60.0) -> list[Answer]:
    endpoint = predict_url(url)
    answers = []
    with requests.Session() as session:
        for path in images:
            try:
                response = session.post(
                    endpoint, data=path.read_bytes(), headers={"content-type": content_type(path)},
                    timeout=timeout,
                )  # fmt: skip
            except requests.RequestException as exc:
                answers.append(Answer(str(path), 0, {"error": f"cannot reach {endpoint}: {exc}"}))
                continue
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:500]}
            answers.append(Answer(str(path), response.status_code, body))
    return answers
