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
# docs/operations.md has the details.

# ---------------------------------------------------------------------------
# builder: a self-contained virtualenv in /opt/streamgmm
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/streamgmm

WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamgmm ./streamgmm
# numpy, scipy (with OpenBLAS) and river come as binary wheels: no compiler.
# pip and setuptools are removed afterwards (here and from the base image
# below): the runtime never installs anything.
RUN /opt/streamgmm/bin/python -m pip install --no-cache-dir --only-binary=:all: --no-binary=streamgmm . \
    && /opt/streamgmm/bin/streamgmm --help > /dev/null \
    && /opt/streamgmm/bin/python -m pip uninstall --yes pip setuptools

# ---------------------------------------------------------------------------
# runtime: the virtualenv, the config, an unprivileged user; nothing else
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="streamgmm" \
      org.opencontainers.image.description="Streaming anomaly detection for Kafka with an online Gaussian mixture model" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID, so volumes and bind mounts can be chowned to it (10001:10001).
RUN groupadd --system --gid 10001 streamgmm \
    && useradd --system --uid 10001 --gid streamgmm --no-create-home \
       --home-dir /var/lib/streamgmm --shell /usr/sbin/nologin streamgmm \
    && install -d -o streamgmm -g streamgmm -m 0700 /var/lib/streamgmm \
    && install -d -m 0755 /etc/streamgmm \
    && python -m pip uninstall --yes pip setuptools wheel

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
