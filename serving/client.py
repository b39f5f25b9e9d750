"""`vft predict`: POST images to a running server, one per request (POST /v1/predict, raw image
body) or `batch` per request (POST /v1/predict/batch, multipart fields `file`)."""

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
    url = url.rstrip("/").removesuffix("/batch")
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


def predict_files(url: str, images: list[Path], timeout: float = 60.0, batch: int = 1) -> list[Answer]:
    """One answer per image, in order. With `batch` > 1, that many images go in each request to
    /v1/predict/batch; each keeps its own status there, and a request refused as a whole gives
    its status to every image in it."""
    endpoint = predict_url(url) + ("/batch" if batch > 1 else "")
    answers = []
    with requests.Session() as session:
        for start in range(0, len(images), batch):
            paths = images[start : start + batch]
            try:
                if batch > 1:
                    files = [("file", (p.name, p.read_bytes(), content_type(p))) for p in paths]
                    response = session.post(endpoint, files=files, timeout=timeout)
                else:
                    data, headers = paths[0].read_bytes(), {"content-type": content_type(paths[0])}
                    response = session.post(endpoint, data=data, headers=headers, timeout=timeout)
            except requests.RequestException as exc:
                answers += [Answer(str(p), 0, {"error": f"cannot reach {endpoint}: {exc}"}) for p in paths]
                continue
            answers += read_answers(response, paths)
    return answers


def read_answers(response: requests.Response, paths: list[Path]) -> list[Answer]:
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text[:500]}
    if response.status_code != 200 or "results" not in body:
        return [Answer(str(p), response.status_code, body) for p in paths]
    answers = []
    for path, result in zip(paths, body["results"], strict=True):
        result = dict(result)
        result.pop("index", None)
        answers.append(Answer(str(path), result.pop("status"), result))
    return answers
