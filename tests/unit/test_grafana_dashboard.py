"""k8s/grafana/vft-dashboard.json reads the series vft exports: every `vft_*` metric the code
defines has a panel, and no panel reads a `vft_*` series that no code defines (what a rename
would leave behind). The series' exported names (`ray_` prefix, `_total` for counters) are checked
against a live metrics agent in tests/integration/test_serving.py and test_train_ray.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "k8s" / "grafana" / "vft-dashboard.json"


def defined_metrics() -> set[str]:
    names = set()
    for path in [*(ROOT / "trainer").rglob("*.py"), *(ROOT / "serving").rglob("*.py")]:
        names |= set(re.findall(r'(?:Gauge|Counter|Histogram)\(\s*"(vft_\w+)"', path.read_text()))
    return names


def dashboard_series() -> set[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    series = set(re.findall(r"\bray_(vft_\w+)", " ".join(exprs)))
    return {re.sub(r"_(total|bucket|sum|count)$", "", s) for s in series}


def test_the_dashboard_reads_exactly_the_series_vft_defines():
    defined = defined_metrics()
    assert {"vft_responses", "vft_batch_size", "vft_train_loss", "vft_train_epoch"} <= defined
    assert dashboard_series() == defined


def test_panels_have_unique_ids_and_fit_the_grid():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in panels)
    datasource = {t["name"] for t in dashboard["templating"]["list"]}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels if p["type"] != "row")
    assert datasource == {"datasource"}
