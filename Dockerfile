# syntax=docker/dockerfile:1
# The vft images for KubeRay, both running as the image's `ray` user (uid 1000, gid 100), which
# the Helm chart's securityContext also sets:
#   docker build -t REGISTRY/vft:0.1.0 .                     # gpu (default): Ray 2.60 on CUDA 12.8,
#                                                             # onnxruntime-gpu and TensorRT 10
#   docker build --target cpu -t REGISTRY/vft:0.1.0-cpu .    # cpu: serving ONNX/INT8 on CPU nodes
# Layers go from the largest and least often changed to the project itself: torch (from the index
# of the base image's CUDA), then the project's dependencies (listed from pyproject.toml), then
# vft's wheel without its dependencies, so a code change rebuilds and pushes a few MB, not the
# multi-GB layers under it.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cu128
ARG RAY_CPU_IMAGE=rayproject/ray:2.60.0-py311

# ---- build: the project's wheel and its dependency lists, nothing else
FROM ${RAY_IMAGE} AS build
# COPY --chown creates the source folder owned by the image's non-root user, who builds in it.
COPY --chown=1000:100 pyproject.toml README.md /home/ray/src/
COPY --chown=1000:100 trainer /home/ray/src/trainer
COPY --chown=1000:100 tuner /home/ray/src/tuner
COPY --chown=1000:100 serving /home/ray/src/serving
# the Helm chart ships in the wheel for `vft submit` (trainer/launch/chart links to it)
COPY --chown=1000:100 charts/vft /home/ray/src/charts/vft
# requirements.txt: the dependencies but torch and torchvision (installed first, from the CUDA
# or CPU index); requirements-cpu.txt and requirements-gpu.txt: the `cpu` (ONNX Runtime) and `gpu`
# (onnxruntime-gpu, TensorRT) extras. Unchanged lists leave the layers that install them cached.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /home/ray/wheels /home/ray/src \
    && python -c "import tomllib; p = tomllib.load(open('/home/ray/src/pyproject.toml', 'rb'))['project']; \
deps = [d for d in p['dependencies'] if not d.startswith(('torch>', 'torchvision>'))]; \
open('/home/ray/wheels/requirements.txt', 'w').write(chr(10).join(deps) + chr(10)); \
[open(f'/home/ray/wheels/requirements-{x}.txt', 'w').write(chr(10).join(p['optional-dependencies'][x]) + chr(10)) for x in ('cpu', 'gpu')]"

# ---- cpu: ONNX Runtime's CPU build, torch from the CPU index
FROM ${RAY_CPU_IMAGE} AS cpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG VFT_VERSION=0.1.0
LABEL org.opencontainers.image.title="vft" \
      org.opencontainers.image.description="Fine-tune, sweep and serve vision models with Ray (CPU)" \
      org.opencontainers.image.version="${VFT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/ray/.cache/huggingface
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=build --chown=1000:100 /home/ray/wheels/requirements.txt /home/ray/wheels/requirements-cpu.txt /tmp/
RUN python -m pip install --no-cache-dir -r /tmp/requirements.txt -r /tmp/requirements-cpu.txt
COPY --from=build --chown=1000:100 /home/ray/wheels/vft-${VFT_VERSION}-py3-none-any.whl /tmp/
# the smoke test: every requirement met, the CLI and ONNX Runtime's CPU provider
RUN python -m pip install --no-cache-dir --no-deps "/tmp/vft-${VFT_VERSION}-py3-none-any.whl" \
    && rm /tmp/vft-*.whl /tmp/requirements*.txt \
    && python -m pip check \
    && python -c "import onnxruntime as ort; assert 'CPUExecutionProvider' in ort.get_available_providers()" \
    && vft --help > /dev/null
USER 1000:100
WORKDIR /home/ray
CMD ["vft", "--help"]

# ---- gpu (the default target): onnxruntime-gpu and TensorRT, torch from the CUDA 12.8 index
FROM ${RAY_IMAGE} AS gpu
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG VFT_VERSION=0.1.0
LABEL org.opencontainers.image.title="vft" \
      org.opencontainers.image.description="Fine-tune, sweep and serve vision models with Ray" \
      org.opencontainers.image.version="${VFT_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/home/ray/.cache/huggingface
RUN python -m pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
      "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
COPY --from=build --chown=1000:100 /home/ray/wheels/requirements.txt /home/ray/wheels/requirements-gpu.txt /tmp/
RUN python -m pip install --no-cache-dir -r /tmp/requirements.txt -r /tmp/requirements-gpu.txt
COPY --from=build --chown=1000:100 /home/ray/wheels/vft-${VFT_VERSION}-py3-none-any.whl /tmp/
# the smoke test: every requirement met (one ONNX Runtime build: the `gpu` extra's, not the CPU
# build), the CLI, ONNX Runtime's CUDA provider and TensorRT import (no GPU is needed to list
# providers or import TensorRT; running them is checked on a GPU node)
RUN python -m pip install --no-cache-dir --no-deps "/tmp/vft-${VFT_VERSION}-py3-none-any.whl" \
    && rm /tmp/vft-*.whl /tmp/requirements*.txt \
    && python -m pip check \
    && python -c "import onnxruntime as ort; assert 'CUDAExecutionProvider' in ort.get_available_providers()" \
    && python -c "import tensorrt; print('tensorrt', tensorrt.__version__)" \
    && vft --help > /dev/null
USER 1000:100
WORKDIR /home/ray
CMD ["vft", "--help"]
