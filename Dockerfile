# protocoop: the HTTP API on port 8000, with an embedded SQLite ledger in the /data volume by
# default. For PostgreSQL, set PROTOCOOP_DATABASE_URL=postgresql+psycopg://user:pass@host/db and
# run `protocoop db upgrade` once (e.g. `docker run --rm <image> protocoop db upgrade`).
#
#   docker build -t protocoop .
#   docker run -p 8000:8000 -v protocoop-data:/data protocoop
#   docker run --rm -v protocoop-data:/data protocoop protocoop keys create --role admin
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 protocoop \
    && useradd --system --uid 10001 --gid protocoop --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin protocoop \
    && mkdir -p /data \
    && chown protocoop:protocoop /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
RUN pip install . && rm -rf /app

ENV PROTOCOOP_DATABASE_URL=sqlite:////data/protocoop.db \
    PROTOCOOP_HOST=0.0.0.0 \
    PROTOCOOP_PORT=8000

USER protocoop
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["protocoop", "serve", "--host", "0.0.0.0"]
