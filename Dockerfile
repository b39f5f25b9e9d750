# syntax=docker/dockerfile:1
# The vft image for KubeRay: Ray 2.60 on CUDA 12 (Python 3.11), vft with its pinned dependencies,
# and the GPU inference backends (onnxruntime-gpu, TensorRT). Runs as the image's `ray` user
# (uid 1000, gid 100), which the Helm chart's securityContext also sets.
#   docker build -t REGISTRY/vft:0.1.0 .
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128

# ---- build: a wheel of the project, nothing else
FROM ${RAY_IMAGE} AS build
# COPY --chown creates the source folder owned by the image's non-root user, who builds in it.
COPY --chown=1000:100 pyproject.toml README.md /home/ray/src/
COPY --chown=1000:100 trainer /home/ray/src/trainer
COPY --chown=1000:100 tuner /home/ray/src/tuner
COPY --chown=1000:100 serving /home/ray/src/serving
# the Helm chart ships in the wheel for `vft submit` (trainer/launch/chart links to it)
COPY --chown=1000:100 charts/vft /home/ray/src/charts/vft
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels /home/ray/src

# ---- runtime
FROM ${RAY_IMAGE}
# torch and torchvision as the Makefile pins them; CUDA wheels come from PyPI's default index.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG VFT_VERSION=0.1.0
# onnxruntime (CPU, a base dependency) and onnxruntime-gpu share one module: the image keeps
# only the GPU build (CUDA 12), reinstalled after the project.
ARG ONNXRUNTIME_VERSION=1.23.2
LABEL org.opencontainers.image.title="vft" \
      org.opencontainers.image.description="Fine-tune, sweep and serve vision models with Ray" \
      org.opencontainers.image.version="${VFT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/ray/.cache/huggingface
COPY --from=build --chown=1000:100 /home/ray/wheels /tmp/wheels
RUN python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python -m pip install --no-cache-dir "/tmp/wheels/vft-${VFT_VERSION}-py3-none-any.whl[gpu]" \
    && python -m pip uninstall -y onnxruntime onnxruntime-gpu \
    && python -m pip install --no-cache-dir --no-deps "onnxruntime-gpu==${ONNXRUNTIME_VERSION}" \
    && rm -rf /tmp/wheels \
    && vft --help > /dev/null
USER 1000:100
WORKDIR /home/ray
CMD ["vft", "--help"]
