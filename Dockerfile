# syntax=docker/dockerfile:1.7
# One image for the whole platform; the command picks the process:
#   docker run -p 4000:4000 kadai                                       the gateway (kadai gateway)
#   docker run kadai service order-service --host 0.0.0.0 --port 3003   one service
# A service container also sets KADAI_HEALTHCHECK_URL to its own /health (see HEALTHCHECK below).
# Needs BuildKit (the default builder since Docker 23) or Buildah/Podman for the cache and bind mounts.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: wheels of the project and of every dependency --------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY gateway/ gateway/
COPY services/ services/
# The compiled dependencies (aiohttp, pydantic-core, orjson, hiredis, cryptography...) publish wheels
# for CPython 3.11 on amd64 and arm64, so no compiler is needed; the cache mount keeps downloads across
# builds without putting them in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="kadai" \
      org.opencontainers.image.description="Kadai Gateway and the Kadai platform services" \
      org.opencontainers.image.licenses="MIT"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The wheels are bind-mounted, not copied: they never become a layer of the final image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels kadai-gateway

# A fixed numeric UID, so Kubernetes' runAsNonRoot can verify it without a runAsUser. The code stays
# root-owned (read-only to the process); /data is the one place a service writes (its SQLite files).
# A volume mounted there is created with this ownership, so it is writable without running as root.
RUN groupadd --system --gid 10001 kadai \
    && useradd --system --uid 10001 --gid kadai --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kadai \
    && install -d -o kadai -g kadai -m 0750 /data

# The container probe, `kadai-healthcheck` (gateway/healthcheck.py), comes with the package: it fails on a
# refused connection, a timeout and any answer outside 2xx (health answers 503 while draining).

WORKDIR /app
# The sample registry lets a bare `docker run` start; deployments mount their own (KADAI_REGISTRY).
COPY registry.yaml ./

# Bytecode was compiled at install time; a read-only root filesystem could not take new .pyc files.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KADAI_DATA_DIR=/data \
    KADAI_HEALTHCHECK_URL=http://127.0.0.1:4000/api/v1/health

USER 10001:10001
# 4000 the gateway; 3001-3007 and 8000 the services (each container runs one of them).
EXPOSE 4000 3001-3007 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["kadai-healthcheck"]

ENTRYPOINT ["kadai"]
CMD ["gateway", "--host", "0.0.0.0", "--port", "4000"]
