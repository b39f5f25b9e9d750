"""The Helm chart's files without the helm binary: example values files for every workload, the
values schema is valid JSON Schema and accepts every example, no secrets in values, the KubeRay
schema files are the documented release, and the chart README names every example. Rendering
with helm: tests/integration/test_chart.py."""

from __future__ import annotations

import hashlib
import re

import yaml
from chart_tools import CHART, CRD_DIR, CRD_FILES, VALUES_FILES, merge_values, values_table


def test_every_workload_has_an_example_values_file():
    workloads = {yaml.safe_load(p.read_text()).get("workload", "train") for p in VALUES_FILES if p}
    assert workloads == {"train", "tune", "serve"}
    storage = {yaml.safe_load(p.read_text()).get("storage", {}).get("type") for p in VALUES_FILES if p}
    assert "s3" in storage


def test_kuberay_schema_files_are_the_documented_release():
    readme = (CRD_DIR / "README.md").read_text()
    for name in CRD_FILES.values():
        digest = hashlib.sha256((CRD_DIR / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme, f"{name} is not the KubeRay v1.7.0 file listed in its README"


def test_values_file_holds_no_secrets():
    text = (CHART / "values.yaml").read_text()
    for path in [CHART / "values.yaml", *[p for p in VALUES_FILES if p]]:
        values = yaml.safe_load(path.read_text())
        assert "credentialsSecret" not in values.get("storage", {}) or isinstance(
            values["storage"]["credentialsSecret"], str
        )
    assert not re.search(r"(?i)(aws_secret_access_key|password|auth_token)\s*:", text)


def test_values_schema_is_valid_json_schema_and_accepts_the_examples():
    import json

    import jsonschema

    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(defaults, schema)
    for path in VALUES_FILES:
        if path is not None:
            jsonschema.validate(merge_values(defaults, yaml.safe_load(path.read_text())), schema)


def test_example_values_files_exist_for_docs():
    readme = (CHART / "README.md").read_text()
    for path in VALUES_FILES:
        if path is not None:
            assert f"ci/{path.name}" in readme, f"charts/vft/README.md does not mention {path.name}"


def test_readme_values_table_is_the_values_files_comments():
    """Every key values.yaml documents (`# --`) has its row, type, default and description in
    charts/vft/README.md: regenerate the table with `python tests/chart_tools.py`."""
    values_section = (CHART / "README.md").read_text().split("\n## Values\n", 1)[1]
    rows = [row for row in values_section.splitlines() if row.startswith("| ") and "| Key |" not in row]
    assert "\n".join(rows) == values_table()
