# syntax=docker/dockerfile:1
# Build: a virtual environment from the exact locks, then the kiban wheel (migrations included).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir "uv>=0.5"
WORKDIR /src
COPY requirements.lock ./
RUN uv venv /opt/venv && VIRTUAL_ENV=/opt/venv uv pip sync requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
RUN VIRTUAL_ENV=/opt/venv uv pip install --no-deps .

# Run: the venv only, as an unprivileged user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 kiban
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    KIBAN_ENV=production
USER kiban
WORKDIR /home/kiban
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"
CMD ["sh", "-c", "kiban migrate && exec kiban serve --host 0.0.0.0 --port 8000 --workers ${KIBAN_WORKERS:-2}"]
