#!/usr/bin/env bash
# Render the example manifests in k8s/examples/ from the Helm chart, the one source of truth.
# Usage: bash k8s/render.sh [OUT_DIR]   (default: k8s/examples; a test checks they are in sync)
set -euo pipefail
cd "$(dirname "$0")/.."
HELM="${VFT_HELM:-.tools/helm}"
OUT="${1:-k8s/examples}"
mkdir -p "$OUT"

render() {  # render FILE RELEASE [helm args...]
    local file="$1" release="$2"
    shift 2
    {
        echo "# Rendered from charts/vft by k8s/render.sh: helm template $release charts/vft $*"
        echo "# Do not edit; change the chart or its values and rerun k8s/render.sh."
        echo "# Apply with: kubectl apply -n NAMESPACE -f $file (KubeRay operator >= 1.5.1 first)."
        "$HELM" template "$release" charts/vft "$@"
    } > "$OUT/$file"
}

render train.yaml digits
render train-multigpu.yaml flowers -f charts/vft/ci/train-multigpu-values.yaml
render tune.yaml flowers-sweep -f charts/vft/ci/tune-autoscaling-values.yaml
render serve.yaml flowers-serve -f charts/vft/ci/serve-autoscaling-values.yaml
