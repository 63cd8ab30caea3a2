# One image for web and worker. Build with --build-arg EXTRAS=gpu for the real engines.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 && rm -rf /var/lib/apt/lists/*
WORKDIR /srv/tunesmith
COPY pyproject.toml README.md ./
COPY app ./app
COPY core ./core
COPY jobs ./jobs
COPY config.py models.py gpu_worker.py gunicorn.conf.py Procfile ./
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}"
RUN useradd --create-home tunesmith && mkdir -p var && chown tunesmith var
USER tunesmith
EXPOSE 8000
CMD ["gunicorn", "app:create_app()", "--bind", "0.0.0.0:8000", "--workers", "2"]
