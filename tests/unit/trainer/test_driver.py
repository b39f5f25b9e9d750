"""`init_ray`'s choice between joining a cluster and starting this machine's own, without Ray
(ray.init is recorded, not called)."""

from __future__ import annotations

import os

import pytest
import ray

from trainer import driver


@pytest.fixture
def calls(monkeypatch):
    recorded: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: recorded.append({**kwargs, "env": dict(os.environ)}))
    # a copy of the environment without them, so nothing init_ray sets outlives the test
    ours = ("RAY_ADDRESS", driver.PREEMPTION_WATCHER, driver.HEALTH_CHECK_INTERVAL)
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in ours})
    return recorded


def test_a_local_cluster_polls_its_train_workers_often_and_watches_no_preemption(calls):
    driver.init_ray(num_cpus=2)
    (call,) = calls
    assert call["address"] == "local" and call["num_cpus"] == 2
    # the cluster's processes (the Train controllers) inherit these from the environment
    assert call["env"][driver.HEALTH_CHECK_INTERVAL] == "0.2"
    assert call["env"][driver.PREEMPTION_WATCHER] == "0"


def test_a_users_own_interval_is_kept(calls, monkeypatch):
    monkeypatch.setenv(driver.HEALTH_CHECK_INTERVAL, "5")
    driver.init_ray()
    assert calls[0]["env"][driver.HEALTH_CHECK_INTERVAL] == "5"


def test_a_cluster_address_keeps_rays_defaults(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    driver.init_ray()
    (call,) = calls
    assert call["address"] == "ray://head:10001"
    assert driver.HEALTH_CHECK_INTERVAL not in call["env"] and driver.PREEMPTION_WATCHER not in call["env"]
