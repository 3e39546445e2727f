# First working image for the gateway; later issues will extend it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Run as an unprivileged user; the code itself stays root-owned (read-only to kadai).
RUN useradd --create-home --uid 10001 kadai

WORKDIR /app
# Packaging metadata first so the layer order stays cache-friendly as it grows.
COPY setup.cfg pyproject.toml README.md ./
COPY gateway/ gateway/
COPY services/ services/
COPY registry.yaml ./
RUN pip install --no-cache-dir .

USER kadai
EXPOSE 4000
# urlopen raises on connection errors and non-2xx answers, so any failure exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4000/api/v1/health', timeout=3)"]

ENTRYPOINT ["kadai"]
CMD ["gateway", "--host", "0.0.0.0"]
