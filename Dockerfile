# actionq image (workers and the HTTP gateway). Build: `docker build -t actionq .`; run: `docker compose up`.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first, so that editing a plugin or config.yml does not reinstall the dependencies.
COPY pyproject.toml README.md ./
COPY service/ ./service/
COPY workers/ ./workers/
# With the gateway extra: the same image runs `actionq gateway` (docker-compose.yml).
RUN pip install .[gateway]

# Plugins are loaded by path (never imported as a package), so they ship as files next to
# config.yml, whose plugin paths (./plugins/...) are relative to the config file.
COPY plugins/ ./plugins/
COPY config.yml ./config.yml

RUN useradd --system --uid 1000 --home-dir /app actionq
USER actionq

# SIGTERM drains the worker (stop taking jobs, grace period, hand running jobs back).
STOPSIGNAL SIGTERM
CMD ["actionq", "--config", "/app/config.yml", "worker"]
