# gansvc for GPU nodes. The build stage compiles the wheel (CPU kernels plus CUDA kernels for sm_75 (T4),
# sm_80, sm_90, sm_100 and sm_120, and PTX of sm_120 that newer GPUs compile at load) with the same steps
# as scripts/setup.sh: the pinned requirements.txt,
# then the package with --no-build-isolation. The runtime stage installs that wheel and runs
# `gansvc serve` as an unprivileged user.
#
#   docker build -t gansvc .
#   docker run --gpus all -p 50051:50051 \
#       -v gansvc-state:/var/lib/gansvc \
#       -v /srv/datasets:/data:ro \
#       -v /srv/gansvc/tokens:/run/secrets/gansvc-tokens:ro \
#       --stop-timeout 120 gansvc
#
# Jobs and their artefacts live in the /var/lib/gansvc volume; data sets are read from /data (for
# example /data/fashion-mnist). `docker stop` sends SIGTERM: running jobs write a checkpoint and
# resume when the container starts again, so give it time (--stop-timeout) to do so.
#
# The same image is every part of a Ray cluster (docs/cluster.md; examples/cluster-compose.yaml): Ray
# 2.60 is in requirements.txt. A Ray head or worker overrides the entry point with `ray`; the gansvc
# server with --backend ray first joins the cluster as a node without slots (a Ray driver needs a Ray
# node on its own host), then serves:
#   docker run -d --network host --gpus all --shm-size 8g -v /mnt/shared/gansvc-jobs:/var/lib/gansvc-jobs \
#       -v /srv/datasets:/data:ro --entrypoint ray --health-cmd "ray health-check --address 10.0.0.1:26379" \
#       gansvc start --head --port 26379 --node-ip-address 10.0.0.1 --block
#   docker run -d --network host --gpus all --shm-size 8g -v /mnt/shared/gansvc-jobs:/var/lib/gansvc-jobs \
#       -v /srv/datasets:/data:ro --entrypoint ray --health-cmd "ray health-check --address 10.0.0.1:26379" \
#       gansvc start --address 10.0.0.1:26379 --node-ip-address 10.0.0.2 --block
#   docker run -d --network host --shm-size 2g -v gansvc-state:/var/lib/gansvc \
#       -v /mnt/shared/gansvc-jobs:/var/lib/gansvc-jobs -v /srv/datasets:/data:ro \
#       -v /srv/gansvc/tokens:/run/secrets/gansvc-tokens:ro --stop-timeout 120 --entrypoint bash gansvc -c \
#       "ray start --address 10.0.0.1:26379 --node-ip-address 10.0.0.3 --num-cpus 0 --num-gpus 0 && exec \
#        gansvc serve --health-listen 127.0.0.1:50052 --backend ray --ray-address 10.0.0.1:26379 \
#        --jobs-dir /var/lib/gansvc-jobs --listen 0.0.0.0:50051 --data-root /data \
#        --auth-token-file /run/secrets/gansvc-tokens"
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Distribution packages follow the pinned base image; their versions are not pinned on their own.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential python3 python3-dev python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# No GPU is visible while building: name the architectures, and where CUDA is. 7.5 is the oldest CUDA 13
# still supports; +PTX on the newest embeds PTX that the driver compiles for GPUs newer than the list.
ENV CUDA_HOME=/usr/local/cuda \
    TORCH_CUDA_ARCH_LIST="7.5;8.0;9.0;10.0;12.0+PTX" \
    MAX_JOBS=4
RUN pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels . \
    && python -m zipfile -l /wheels/gansvc-*.whl | grep -q "gansvc/_proto/v1/gansvc_pb2_grpc.py"

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/gansvc gansvc \
    && mkdir -p /var/lib/gansvc /var/lib/gansvc-jobs /data \
    && chown gansvc:gansvc /var/lib/gansvc /var/lib/gansvc-jobs
USER gansvc
WORKDIR /home/gansvc
# GANSVC_DATA_ROOT: where the trainer looks for a data set left at its default location.
# RAY_USAGE_STATS_ENABLED=0: a Ray node of this image reports nothing beyond the cluster.
ENV GANSVC_STATE_DIR=/var/lib/gansvc \
    GANSVC_DATA_ROOT=/data \
    RAY_USAGE_STATS_ENABLED=0
VOLUME ["/var/lib/gansvc"]
# 50051: gansvc's gRPC port; 26379: the Ray head's GCS port in the documented commands (Ray's other ports:
# docs/cluster.md)
EXPOSE 50051 26379
STOPSIGNAL SIGTERM
# The standard grpc.health.v1 check on the health-only port that the entry point always opens on the
# container's loopback (plaintext, no token, nothing but health), so it works in every mode: plaintext or
# TLS (--tls-cert/--tls-key), with or without tokens, whatever CMD says.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["gansvc", "health", "--server", "127.0.0.1:50052", "--timeout", "5"]
ENTRYPOINT ["gansvc", "serve", "--health-listen", "127.0.0.1:50052"]
CMD ["--listen", "0.0.0.0:50051", "--devices", "all", "--data-root", "/data", "--auth-token-file", "/run/secrets/gansvc-tokens"]
