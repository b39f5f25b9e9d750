"""GCS fault tolerance for real: the head keeps the cluster's state in Redis (Debian's
`redis-server`, started here) as the chart's `gcsFaultTolerance` has KubeRay do, `vft serve` serves
an exported run on that cluster, and the head's GCS process is killed and started again while a
client keeps asking. Serving must not notice (requests go from the HTTP proxy to the replica
without the GCS), and the restarted GCS must take the cluster back from Redis: the same Serve
application, still running, for a new driver. What a pod restart adds on Kubernetes (the other
head processes restarting with it) cannot run here."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from local_ray import clean_env, free_ports, naming, start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis(tmp_path):
    """(address, password) of a redis-server of its own, without persistence: Redis outlives
    the GCS here, as a managed Redis outlives a head pod."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `make tools` installs Debian's package")
    port, password = free_ports(1)[0], secrets.token_hex(16)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password,
           "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield f"127.0.0.1:{port}", password
    proc.terminate()
    proc.wait(timeout=10)


def redis_keys(address: str, password: str) -> int:
    host, port = address.split(":")
    out = subprocess.run(
        ["redis-cli", "-h", host, "-p", port, "-a", password, "--no-auth-warning", "dbsize"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    return int(out.stdout.strip())


@pytest.fixture
def ft_cluster(redis):
    address, password = redis
    cluster = start(
        num_cpus=2, block=False, args=("--redis-password", password), RAY_REDIS_ADDRESS=address,
        RAY_external_storage_namespace="vft-test",
    )  # fmt: skip
    yield cluster
    cluster.stop()


def gcs_process(cluster) -> int:
    found = [
        p for p in naming(str(cluster.temp_dir)) if b"gcs_server" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert len(found) == 1, found
    return found[0]


def serve_status(cluster) -> str:
    """The `vft` application's status as a new driver reads it from the (restarted) GCS."""
    code = (
        f"import ray; from ray import serve; ray.init(address={cluster.address!r}, logging_level='ERROR'); "
        "print(serve.status().applications['vft'].status.value)"
    )
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_serving_answers_every_request_while_the_gcs_restarts_from_redis(
    ft_cluster, redis, exported_run, digits_dir, tmp_path
):
    run_dir, _ = exported_run
    assert redis_keys(*redis) > 0, "the head keeps no GCS state in Redis"
    port = free_ports(1)[0]
    log_path = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "trainer.cli", "serve", str(run_dir), "--port", str(port),
           "--address", ft_cluster.address, "--cpus-per-replica", "0.5"]  # fmt: skip
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ft_cluster.token)
    with log_path.open("w") as log:
        server = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
    image = next((digits_dir / "val").rglob("*.png"))
    answers: list[tuple[float, int | str, str | None]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                r = requests.post(f"http://127.0.0.1:{port}/v1/predict", data=image.read_bytes(),
                                  headers={"Content-Type": "image/png"}, timeout=10)  # fmt: skip
                label = r.json()["predictions"][0]["label"] if r.status_code == 200 else None
                answers.append((time.monotonic(), r.status_code, label))
            except requests.RequestException as exc:
                answers.append((time.monotonic(), repr(exc), None))
            time.sleep(0.05)

    client = threading.Thread(target=ask, daemon=True)
    try:
        deadline = time.monotonic() + 120
        while f"127.0.0.1:{port}" not in log_path.read_text():
            assert server.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "vft serve did not start"
            time.sleep(0.5)
        client.start()
        while len(answers) < 5:
            time.sleep(0.1)

        # the GCS dies as in a head crash; its command line and environment start it again
        pid = gcs_process(ft_cluster)
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        environ = dict(
            item.split(b"=", 1)
            for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"=" in item
        )
        cwd = os.readlink(f"/proc/{pid}/cwd")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        time.sleep(3)  # the head without its GCS; requests keep coming
        restarted_at = time.monotonic()
        subprocess.Popen(argv, env=environ, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                         start_new_session=True)  # fmt: skip
        assert serve_status(ft_cluster) == "RUNNING"  # read back from Redis by the new GCS
        recovered_at = time.monotonic()
        after = len(answers)
        while len(answers) < after + 5:
            time.sleep(0.1)
    finally:
        stop.set()
        client.join(timeout=15)
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)

    during = [a for a in answers if killed_at <= a[0] <= recovered_at]
    failed = [a for a in answers if a[1] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    assert len([a for a in during if a[0] < restarted_at]) >= 10, "too few requests while the GCS was down"
    assert len({a[2] for a in answers}) == 1, "the answer changed across the restart"
