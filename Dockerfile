# syntax=docker/dockerfile:1
# Two images from one file:
#   --target api     FastAPI front end (no torch: it validates specs and stores files, never trains)
#   --target worker  Celery GPU worker (torch 2.13.0 from PyPI, whose Linux wheels bundle the CUDA runtime;
#                    the host needs the NVIDIA driver and container toolkit)
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MAPO_DATA_DIR=/data
WORKDIR /app
RUN useradd --create-home --uid 10001 mapo && mkdir -p /data && chown mapo /data
COPY pyproject.toml README.md ./
COPY api ./api
COPY core ./core
COPY trainer ./trainer
COPY worker ./worker
COPY client ./client
COPY ops ./ops
COPY migrations ./migrations

FROM base AS api
RUN pip install .
USER mapo
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]

FROM base AS worker
RUN pip install "torch==2.13.0" && pip install ".[train]"
ENV HF_HOME=/data/hf-cache
USER mapo
# One training at a time per process; run one container per GPU.
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "mapo.gpu", "--concurrency", "1", "--loglevel", "INFO"]
