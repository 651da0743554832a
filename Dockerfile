# STLight serving image: ONNX Runtime + FastAPI, no torch.
#
#   docker build -t stlight-serve:gpu .                          # CUDA 13 + cuDNN 9 wheels from pip (default)
#   docker build -t stlight-serve:cpu --build-arg RUNTIME=cpu .  # CPU-only, no CUDA libraries
#   docker run --gpus all -p 8000:8000 stlight-serve:gpu
#   docker run -p 8000:8000 -v "$PWD/models:/models:ro" -e STLIGHT_MODEL=/models/mine.onnx stlight-serve:cpu
#
# The CPU image builds for linux/amd64 and linux/arm64 (Graviton, Apple silicon hosts, GH200's
# Grace cores); one multi-arch tag with buildx:
#   docker buildx build --platform linux/amd64,linux/arm64 --build-arg RUNTIME=cpu -t REPO/stlight-serve:cpu --push .
# The GPU image is linux/amd64 only: PyPI's onnxruntime-gpu and NVIDIA's CUDA wheels exist for
# x86_64 alone, so a GPU build for another architecture stops with that reason.
#
# Works on the official python image and on any Debian-like image with python3 + python3-venv
# (only /opt/venv/bin/... is used after the venv is made; no global pip needed).
ARG BASE=python:3.11-slim-bookworm
# cuda | cpu; global so that the last line can pick the runtime stage by it
ARG RUNTIME=cuda

# ---- requirements: the serving dependencies, read from pyproject's [project] table -----------
# Never the torch `train` extra. A stage of its own, so that the slow install layer below is
# keyed on this list alone and survives pyproject edits that do not touch dependencies.
FROM ${BASE} AS requirements
# cuda: onnxruntime-gpu with the `cuda` extra (nvidia-* CUDA / cuDNN wheels);
# cpu:  the plain `onnxruntime` wheel in its place (onnxruntime-gpu alone would add ~260 MB of
#       CUDA kernels that never run without a GPU).
ARG RUNTIME
COPY pyproject.toml /tmp/
RUN case "$RUNTIME" in cuda|cpu) ;; *) echo "RUNTIME must be 'cuda' or 'cpu', got '$RUNTIME'" >&2; exit 1;; esac \
 && if [ "$RUNTIME" = cuda ] && [ "$(uname -m)" != x86_64 ]; then \
      echo "the GPU image is linux/amd64 only (no onnxruntime-gpu wheels for $(uname -m)); build this platform with --build-arg RUNTIME=cpu" >&2; exit 1; fi \
 && python3 -c "import sys, tomllib; \
p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; \
cpu = sys.argv[1] == 'cpu'; \
deps = p['dependencies'] + ([] if cpu else p['optional-dependencies']['cuda']); \
print('\\n'.join(d.replace('onnxruntime-gpu', 'onnxruntime', 1) if cpu else d for d in deps))" "$RUNTIME" \
    > /tmp/requirements.txt \
 && cat /tmp/requirements.txt

# ---- build: a venv with those dependencies and the project ---------------------------------
FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY export ./export
COPY service ./service
RUN test -f service/assets/default.onnx || { echo "service/assets/default.onnx is missing: the image ships a default model" >&2; exit 1; } \
 && /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/stlight serve --help >/dev/null \
 && /opt/venv/bin/python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())" \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

# ---- runtime: the venv, a non-root user, nothing else ---------------------------------------
FROM ${BASE} AS runtime
ARG RUNTIME
LABEL org.opencontainers.image.title="stlight-serve" \
      org.opencontainers.image.description="STLight frame prediction served with FastAPI + ONNX Runtime" \
      org.opencontainers.image.licenses="MIT" \
      stlight.runtime="${RUNTIME}"
RUN groupadd --system --gid 10001 stlight \
 && useradd --system --uid 10001 --gid stlight --home-dir /home/stlight --create-home --shell /usr/sbin/nologin stlight \
 && mkdir -p /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER stlight
WORKDIR /home/stlight
# 8000: HTTP (/predict, /v2, /metrics...); 8001: the Open Inference Protocol over gRPC (h2c)
EXPOSE 8000 8001
# /readyz answers 200 once the model is loaded and warmed; urlopen raises (exit 1) otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
# Exec form: stlight (uvicorn) is PID 1 and gets SIGTERM from `docker stop`, then drains and exits 0.
STOPSIGNAL SIGTERM
CMD ["stlight", "serve", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "8001"]

# ---- the variant: the CUDA image tells the NVIDIA container runtime what it needs -------------
FROM runtime AS runtime-cpu

# `--runtime=nvidia` / Kubernetes' device plugin read these: which GPUs and driver parts to mount,
# and the CUDA version the host driver must support. onnxruntime-gpu's CUDA 13 wheels need driver
# R580+ and a GPU of compute capability 7.5+ (no V100/P100/GTX 10xx): an older driver is refused
# at `docker run` with that reason instead of the service failing CUDA and restarting in a loop.
FROM runtime AS runtime-cuda
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

FROM runtime-${RUNTIME}
