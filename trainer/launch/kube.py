"""`vft submit --to k8s`: create the rendered objects with the kubernetes client and watch the
RayJob or RayService until it succeeds or fails (optionally following the driver's logs)."""

from __future__ import annotations

import sys
import threading
import time

from trainer.launch.options import CR_PLURALS, SubmitError, SubmitOptions, say

RAY_GROUP, RAY_VERSION = "ray.io", "v1"
CREATE_ORDER = ["ServiceAccount", "NetworkPolicy", "PodDisruptionBudget", "PodMonitor", "ConfigMap"]
CREATE_ORDER += ["RayJob", "RayService"]
MONITORING = ("monitoring.coreos.com", "v1", "podmonitors")  # the Prometheus Operator's PodMonitor


def kube_namespace(opts: SubmitOptions) -> str:
    """The kubeconfig context's namespace, else `default`."""
    from kubernetes import config as kube_config

    try:
        contexts, active = kube_config.list_kube_config_contexts(
            config_file=str(opts.kubeconfig) if opts.kubeconfig else None
        )
    except Exception:  # noqa: BLE001 - no kubeconfig: in-cluster or a dry run
        return "default"
    if opts.context:
        active = next((c for c in contexts if c["name"] == opts.context), active)
    return (active or {}).get("context", {}).get("namespace") or "default"


def kube_client(opts: SubmitOptions):
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.config.config_exception import ConfigException

    try:
        kube_config.load_kube_config(
            config_file=str(opts.kubeconfig) if opts.kubeconfig else None, context=opts.context
        )
    except (ConfigException, FileNotFoundError, OSError) as exc:
        try:
            kube_config.load_incluster_config()
        except ConfigException:
            raise SubmitError(f"--kubeconfig: no usable Kubernetes configuration ({exc})") from None
    return client.ApiClient()


class KubeObjects:
    """Create, read and replace the chart's kinds through the kubernetes client."""

    def __init__(self, api_client):
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, doc: dict, ns: str) -> None:
        kind = doc["kind"]
        if kind == "ConfigMap":
            self.core.create_namespaced_config_map(ns, doc)
        elif kind == "ServiceAccount":
            self.core.create_namespaced_service_account(ns, doc)
        elif kind == "NetworkPolicy":
            self.net.create_namespaced_network_policy(ns, doc)
        elif kind == "PodDisruptionBudget":
            self.policy.create_namespaced_pod_disruption_budget(ns, doc)
        elif kind == "PodMonitor":
            self.custom.create_namespaced_custom_object(*MONITORING[:2], ns, MONITORING[2], doc)
        elif kind in CR_PLURALS:
            self.custom.create_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, CR_PLURALS[kind], doc)
        else:
            raise SubmitError(f"the chart rendered a {kind}, which `vft submit` does not create")

    def replace(self, doc: dict, ns: str) -> None:
        kind, name = doc["kind"], doc["metadata"]["name"]
        if kind == "ConfigMap":
            self.core.replace_namespaced_config_map(name, ns, doc)
        elif kind == "ServiceAccount":
            self.core.replace_namespaced_service_account(name, ns, doc)
        elif kind == "NetworkPolicy":
            self.net.replace_namespaced_network_policy(name, ns, doc)
        elif kind == "PodDisruptionBudget":
            self.policy.replace_namespaced_pod_disruption_budget(name, ns, doc)
        elif kind == "PodMonitor":
            self.custom.replace_namespaced_custom_object(*MONITORING[:2], ns, MONITORING[2], name, doc)
        elif kind == "RayService":  # a new model or config: KubeRay upgrades it without downtime
            self.custom.patch_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, "rayservices", name, doc)
        else:
            raise SubmitError(
                f"{kind} {ns}/{name} already exists: delete it "
                f"(kubectl -n {ns} delete {kind.lower()} {name}) or submit with another --name"
            )

    def get(self, kind: str, name: str, ns: str) -> dict:
        return self.custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, CR_PLURALS[kind], name)


def submit_k8s(docs: list[dict], namespace: str, opts: SubmitOptions) -> int:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api = KubeObjects(kube_client(opts))
    docs = sorted(docs, key=lambda d: CREATE_ORDER.index(d["kind"]) if d["kind"] in CREATE_ORDER else 99)
    try:
        for doc in docs:
            ref = f"{doc['kind']} {namespace}/{doc['metadata']['name']}"
            try:
                api.create(doc, namespace)
                say(f"created {ref}")
            except ApiException as exc:
                if exc.status != 409:
                    raise
                api.replace(doc, namespace)
                say(f"updated {ref}")
    except ApiException as exc:
        message = f"{exc.status} {exc.reason}: {_api_message(exc)}"
        raise SubmitError(f"Kubernetes refused the objects: {message}") from None
    except HTTPError as exc:
        raise SubmitError(f"cannot reach the Kubernetes API: {exc}") from None
    main = next(d for d in docs if d["kind"] in CR_PLURALS)
    return watch(api, main["kind"], main["metadata"]["name"], namespace, opts)


def _api_message(exc) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", exc.body)
    except (TypeError, ValueError, AttributeError):
        return str(exc.body)


def watch(api: KubeObjects, kind: str, name: str, ns: str, opts: SubmitOptions) -> int:
    """Poll the RayJob or RayService until it settles; 0 on success, 1 on failure or timeout."""
    from kubernetes.client.exceptions import ApiException

    started = time.monotonic()
    seen = None
    follower = None
    while True:
        try:
            obj = api.get(kind, name, ns)
        except ApiException as exc:
            if exc.status == 404:
                say(f"{kind} {ns}/{name} was deleted")
                return 1
            raise
        status = obj.get("status") or {}
        state, outcome = job_outcome(status) if kind == "RayJob" else service_outcome(status)
        if state != seen:
            say(f"{kind} {ns}/{name}: {state}")
            seen = state
        running = status.get("jobDeploymentStatus") in ("Running", "Complete", "Failed")
        if opts.follow and kind == "RayJob" and follower is None and running:
            follower = threading.Thread(target=follow_submitter, args=(api, name, ns), daemon=True)
            follower.start()
        if outcome is not None:
            if follower is not None:
                follower.join(timeout=30)
            if outcome != 0:
                detail = status.get("message") or status.get("reason") or state
                say(f"{kind} {ns}/{name} failed: {detail}")
            return outcome
        if opts.timeout and time.monotonic() - started > opts.timeout:
            say(f"{kind} {ns}/{name}: still {state} after {opts.timeout:.0f}s (--timeout); it keeps running")
            return 1
        time.sleep(opts.poll_interval)


def job_outcome(status: dict) -> tuple[str, int | None]:
    deployment = status.get("jobDeploymentStatus") or "New"
    job = status.get("jobStatus") or ""
    state = f"{deployment}" + (f" (job {job})" if job else "")
    if deployment == "Complete":
        return state, 0 if job == "SUCCEEDED" else 1
    if deployment in ("Failed", "ValidationFailed"):
        return state, 1
    return state, None


def service_outcome(status: dict) -> tuple[str, int | None]:
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    if ready.get("status") == "True":
        return "Ready", 0
    reason = ready.get("reason") or "Initializing"
    if reason in ("InitializingTimeout", "ValidationFailed"):
        return reason, 1
    return reason, None


def follow_submitter(api: KubeObjects, name: str, ns: str) -> None:
    """Stream the submitter pod's output: `ray job logs --follow`, i.e. the driver's logs."""
    from kubernetes.client.exceptions import ApiException

    for _ in range(120):
        pods = api.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={name}").items
        started = [p for p in pods if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]
        if started:
            pod = started[-1].metadata.name
            try:
                stream = api.core.read_namespaced_pod_log(pod, ns, follow=True, _preload_content=False)
                for chunk in stream.stream():
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
            except ApiException as exc:
                say(f"cannot read the logs of pod {ns}/{pod}: {exc.reason}")
            return
        time.sleep(1)
