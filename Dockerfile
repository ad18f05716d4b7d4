# syntax=docker/dockerfile:1
#
# streamgmm container image.
#
#   docker build -t streamgmm:0.1.0 .
#   docker run -d --name streamgmm --stop-timeout 60 -p 9108:9108 \
#       -v streamgmm-state:/var/lib/streamgmm \
#       -v /srv/streamgmm/etc:/etc/streamgmm:ro \
#       streamgmm:0.1.0
#
# Without the /etc/streamgmm mount the baked config/container.yaml is used
# (broker, topics and group from environment variables). Metrics, /healthz
# and /readyz listen on 0.0.0.0:9108 inside the container
# (STREAMGMM_METRICS_HOST). Both stages use the same base image, so the
# virtualenv built in the first one runs unchanged in the second.
#
# Two build arguments serve hosts without a registry or a package index
# (`make image-test` uses both; docs/operations.md, section 1.3):
#   BASE_IMAGE  any Debian-like image with Python 3.11, python3-venv and
#               useradd, e.g. one made by mmdebstrap and `podman import`;
#   WHEELHOUSE  a directory of wheels inside the build context (the
#               dependencies and setuptools/wheel, from `pip download`):
#               pip then installs from it alone, without an index.
#   docker build --build-arg BASE_IMAGE=localhost/debian-python:bookworm \
#       --build-arg WHEELHOUSE=build/image/wheels -t streamgmm:0.1.0 .
# docs/operations.md has the details.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------
# builder: a self-contained virtualenv in /opt/streamgmm
FROM ${BASE_IMAGE} AS builder

# Empty: the dependencies come from the package index.
ARG WHEELHOUSE=""

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/streamgmm

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamgmm ./streamgmm
# numpy, scipy (with OpenBLAS) and river come as binary wheels: no compiler.
# pip and setuptools are removed afterwards (here and from the base image
# below): the runtime never installs anything. The build context is mounted
# (read-only, never copied into a layer) only to reach the WHEELHOUSE.
RUN --mount=type=bind,target=/context \
    if [ -n "$WHEELHOUSE" ]; then set -- --no-index --find-links "/context/$WHEELHOUSE"; fi \
    && /opt/streamgmm/bin/python -m pip install --no-cache-dir "$@" --only-binary=:all: --no-binary=streamgmm . \
    && /opt/streamgmm/bin/streamgmm --help > /dev/null \
    && /opt/streamgmm/bin/python -m pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------
# runtime: the virtualenv, the config, an unprivileged user; nothing else
FROM ${BASE_IMAGE} AS runtime

LABEL org.opencontainers.image.title="streamgmm" \
      org.opencontainers.image.description="Streaming anomaly detection for Kafka with an online Gaussian mixture model" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID, so volumes and bind mounts can be chowned to it (10001:10001).
RUN groupadd --system --gid 10001 streamgmm \
    && useradd --system --uid 10001 --gid streamgmm --no-create-home \
       --home-dir /var/lib/streamgmm --shell /usr/sbin/nologin streamgmm \
    && install -d -o streamgmm -g streamgmm -m 0700 /var/lib/streamgmm \
    && install -d -m 0755 /etc/streamgmm \
    && if python -m pip --version > /dev/null 2>&1; then \
           python -m pip uninstall --yes pip setuptools wheel; \
       fi

COPY --from=builder /opt/streamgmm /opt/streamgmm
COPY config/container.yaml /etc/streamgmm/streamgmm.yaml

ENV PATH=/opt/streamgmm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMGMM_METRICS_HOST=0.0.0.0 \
    STREAMGMM_METRICS_PORT=9108

VOLUME ["/etc/streamgmm", "/var/lib/streamgmm"]
EXPOSE 9108

USER 10001:10001
WORKDIR /var/lib/streamgmm

# /healthz answers while the consume loop is alive; python, since the slim
# image has no curl. Exit 1 (unhealthy) on any error or non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('STREAMGMM_METRICS_PORT', '9108') + '/healthz', timeout=4)"]

# SIGTERM: finish the batch, flush, checkpoint, commit, leave the group.
# Give it time: docker stop -t 60 / compose stop_grace_period: 60s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["streamgmm"]
CMD ["run", "-c", "/etc/streamgmm/streamgmm.yaml"]
