# syntax=docker/dockerfile:1.7
#
# wanrt service images.
#
#   docker build --target gpu -t wanrt:gpu .    TensorRT backend, on NVIDIA's TensorRT image (GPU_BASE)
#   docker build --target cpu -t wanrt:cpu .    onnxruntime on CPU, Debian slim Python (CPU_BASE); also the
#                                               default target (last stage), the one CI builds
#
# Build arguments:
#   GPU_BASE  pinned TensorRT image on TensorRT 11 (strongly typed engines only; wanrt runs 10.14+ and 11.x):
#             26.10 = NVIDIA's TensorRT 11.4 release (October 2026), CUDA 13, Python 3.12; check its
#             container release notes' driver table against the fleet. Pin by digest in production:
#             --build-arg GPU_BASE=nvcr.io/nvidia/tensorrt:26.10-py3@sha256:...
#   CPU_BASE  any Debian-family image with python3 (>= 3.11), its venv module, bash and ca-certificates;
#             CI passes a locally bootstrapped Debian base (deploy/ci/podman-smoke.sh).
#   WANRT_VERSION, VCS_REF, BUILD_DATE  recorded in the OCI labels.
#
# Behind a TLS-inspecting proxy, pass the proxy CA (PEM) as a build secret; it is used by pip/apt in the
# builder stages only and never stored in a layer (deploy/docker/with-extra-ca.sh):
#   docker build --secret id=extra_ca,src=/path/proxy-ca.pem ...
#   podman build --secret id=extra_ca,src=/path/proxy-ca.pem ...
#
# Runtime contract (docker-compose.yml applies all of it): fixed UID/GID 10001, read-only root file
# system with a tmpfs on /tmp, writable volumes /var/lib/wanrt/outputs and /var/log/wanrt, models and
# engines read-only under /models, TLS material and tokens under /run/secrets, gRPC on 50051, Prometheus
# metrics on 9464, SELinux type wanrt_container_t (selinux/).

ARG GPU_BASE=nvcr.io/nvidia/tensorrt:26.10-py3
ARG CPU_BASE=python:3.11-slim-bookworm

############################################################################################################
# GPU builder: compilers and headers live here only. Every third-party package comes from the hashed lock
# (deploy/docker/requirements-gpu.lock); pycuda, which PyPI has only as source, is built here into a wheel from
# its hashed sdist, without build isolation (its build backend is in the lock too), and installed as that wheel.
FROM ${GPU_BASE} AS gpu-builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/docker/with-extra-ca.sh /usr/local/bin/with-extra-ca
# The base image is pinned; apt packages follow its Ubuntu release.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=extra_ca,required=false \
    with-extra-ca apt-get update \
    && with-extra-ca apt-get install -y --no-install-recommends python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . /src
# --system-site-packages: the TensorRT Python bindings come with the base image, matching its libnvinfer.
# 1. download everything the lock lists, each file checked against its hash; 2. install the wheels, offline;
# 3. build pycuda's wheel from the downloaded sdist, offline; 4. install it and wanrt, offline.
RUN --mount=type=secret,id=extra_ca,required=false \
    python3 -m venv --system-site-packages /opt/wanrt \
    && with-extra-ca /opt/wanrt/bin/pip download --require-hashes --no-deps -d /wheels \
         -r /src/deploy/docker/requirements-gpu.lock \
    && /opt/wanrt/bin/pip install --no-index --no-deps /wheels/*.whl \
    && /opt/wanrt/bin/pip wheel --no-index --no-deps --no-build-isolation -w /wheels /wheels/pycuda-*.tar.gz \
    && /opt/wanrt/bin/pip install --no-index --no-deps /wheels/pycuda-*.whl \
    && /opt/wanrt/bin/pip install --no-deps --no-build-isolation --no-index /src \
    && /opt/wanrt/bin/pip uninstall -y pip

############################################################################################################
# GPU runtime.
FROM ${GPU_BASE} AS gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG WANRT_VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG GPU_BASE
LABEL org.opencontainers.image.title="wanrt" \
      org.opencontainers.image.description="TensorRT inference service for Wan2.x text-to-video (GPU)" \
      org.opencontainers.image.version="${WANRT_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="wanrt" \
      org.opencontainers.image.base.name="${GPU_BASE}"
# The TensorRT image is a development image: drop the C/C++/CUDA compilers from the runtime stage, then
# prove TensorRT still imports and that no compiler is left on PATH.
RUN dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' \
        | awk '$1 == "ii" { print $2 }' \
        | { grep -E '^(gcc|g\+\+|cpp)(-[0-9]+)?(-x86-64-linux-gnu|-aarch64-linux-gnu)?$|^(build-essential|clang(-[0-9]+)?|cuda-nvcc-[0-9-]+|cuda-compiler-[0-9-]+|cuda-crt-[0-9-]+)$' || true; } \
        | xargs --no-run-if-empty apt-get purge -y \
    && rm -rf /var/lib/apt/lists/* \
    && for c in cc c++ gcc g++ clang nvcc; do \
         if command -v "$c" >/dev/null; then echo "compiler left in the runtime image: $(command -v "$c")" >&2; exit 1; fi; \
       done \
    && python3 -c 'import tensorrt; print("TensorRT", tensorrt.__version__)'
RUN groupadd --system --gid 10001 wanrt \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
               --shell /usr/sbin/nologin wanrt \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/wanrt /var/lib/wanrt/outputs /var/log/wanrt \
    && install -d -m 0755 /models
COPY --from=gpu-builder /opt/wanrt /opt/wanrt
# The venv's own Python must import what serving needs: tensorrt (the base image's bindings, through
# --system-site-packages, in the version range wanrt supports) and pycuda.driver (compiled in gpu-builder).
# pycuda.driver links libcuda.so.1, which the NVIDIA container runtime injects when the container runs; at build
# time the image's CUDA forward-compatibility copy stands in for it.
RUN compat="$(find /usr/local/cuda/compat -maxdepth 1 -type d -name 'lib*' 2>/dev/null | sort -r | head -n 1)" \
    && LD_LIBRARY_PATH="${compat}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}" /opt/wanrt/bin/python -c \
       'import pycuda, pycuda.driver; from wanrt.engine.tensorrt.engine import tensorrt_module; \
print("TensorRT", tensorrt_module().__version__, "pycuda", pycuda.VERSION_TEXT)'
# CycloneDX SBOM of what the image holds: OS packages (dpkg) and every Python distribution the venv sees. The
# generator is mounted from the builder for this step only.
RUN --mount=type=bind,from=gpu-builder,source=/src/deploy/docker/sbom.py,target=/tmp/sbom.py \
    /opt/wanrt/bin/python /tmp/sbom.py --out /opt/wanrt/share/sbom.cdx.json \
        --name wanrt-gpu --version "${WANRT_VERSION}" --timestamp "${BUILD_DATE}"
ENV PATH="/opt/wanrt/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    CUDA_CACHE_PATH=/tmp/.nv/ComputeCache \
    HF_HUB_OFFLINE=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
VOLUME ["/var/lib/wanrt/outputs", "/var/log/wanrt"]
STOPSIGNAL SIGTERM
# Engine deserialisation takes minutes on first start: a long start period.
# Health over the server's unix socket (serve --health-socket): no TCP connect, so the SELinux domain
# needs no name_connect, and no TLS material is needed to probe.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["wanrt", "client", "health", "--server", "unix:/tmp/wanrt-health.sock", "--insecure"]
ENTRYPOINT ["wanrt"]
CMD ["serve", "--backend", "tensorrt", "--device", "cuda:0", \
     "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--health-socket", "/tmp/wanrt-health.sock", \
     "--tls-cert", "/run/secrets/wanrt_tls_cert", "--tls-key", "/run/secrets/wanrt_tls_key", \
     "--tokens", "/run/secrets/wanrt_tokens", "--audit-log", "/var/log/wanrt/audit.jsonl"]

############################################################################################################
# CPU builder.
FROM ${CPU_BASE} AS cpu-builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/docker/with-extra-ca.sh /usr/local/bin/with-extra-ca
COPY . /src
# Every third-party package comes from the hashed lock (deploy/docker/lock.sh writes it): a changed or
# substituted wheel fails the build. wanrt itself is then built from /src with no further downloads.
RUN --mount=type=secret,id=extra_ca,required=false \
    python3 -m venv /opt/wanrt \
    && with-extra-ca /opt/wanrt/bin/pip install --require-hashes --no-deps -r /src/deploy/docker/requirements-cpu.lock \
    && /opt/wanrt/bin/pip install --no-deps --no-build-isolation --no-index /src \
    && /opt/wanrt/bin/pip uninstall -y pip

############################################################################################################
# CPU runtime (default target).
FROM ${CPU_BASE} AS cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG WANRT_VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG CPU_BASE
LABEL org.opencontainers.image.title="wanrt" \
      org.opencontainers.image.description="Inference service for Wan2.x text-to-video (CPU, onnxruntime)" \
      org.opencontainers.image.version="${WANRT_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="wanrt" \
      org.opencontainers.image.base.name="${CPU_BASE}"
RUN groupadd --system --gid 10001 wanrt \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
               --shell /usr/sbin/nologin wanrt \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/wanrt /var/lib/wanrt/outputs /var/log/wanrt \
    && install -d -m 0755 /models \
    && for c in cc c++ gcc g++ clang; do \
         if command -v "$c" >/dev/null; then echo "compiler in the CPU base image: $(command -v "$c")" >&2; exit 1; fi; \
       done
COPY --from=cpu-builder /opt/wanrt /opt/wanrt
# The embedded demo model under a fixed name, so docker-compose.yml can serve it out of the box (the
# package's own path carries the Python version).
RUN ln -s "$(/opt/wanrt/bin/python -c 'from wanrt.reef import default_model_dir; print(default_model_dir())')" \
          /opt/wanrt/reef-model \
    && test -f /opt/wanrt/reef-model/manifest.json
# CycloneDX SBOM of what the image holds: OS packages (dpkg) and every Python distribution the venv sees. The
# generator is mounted from the builder for this step only.
RUN --mount=type=bind,from=cpu-builder,source=/src/deploy/docker/sbom.py,target=/tmp/sbom.py \
    /opt/wanrt/bin/python /tmp/sbom.py --out /opt/wanrt/share/sbom.cdx.json \
        --name wanrt-cpu --version "${WANRT_VERSION}" --timestamp "${BUILD_DATE}"
ENV PATH="/opt/wanrt/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    HF_HUB_OFFLINE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
VOLUME ["/var/lib/wanrt/outputs", "/var/log/wanrt"]
STOPSIGNAL SIGTERM
# Health over the server's unix socket (serve --health-socket): no TCP connect, so the SELinux domain
# needs no name_connect, and no TLS material is needed to probe.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["wanrt", "client", "health", "--server", "unix:/tmp/wanrt-health.sock", "--insecure"]
ENTRYPOINT ["wanrt"]
CMD ["serve", "--backend", "onnxruntime", \
     "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464", "--health-socket", "/tmp/wanrt-health.sock", \
     "--tls-cert", "/run/secrets/wanrt_tls_cert", "--tls-key", "/run/secrets/wanrt_tls_key", \
     "--tokens", "/run/secrets/wanrt_tokens", "--audit-log", "/var/log/wanrt/audit.jsonl"]
