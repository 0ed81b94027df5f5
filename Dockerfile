# One image for every process: webhook (gunicorn), worker, beat, migrate.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY kling ./kling
COPY models ./models
COPY migrations ./migrations
COPY worker ./worker
COPY webhook ./webhook
COPY klingctl ./klingctl
RUN pip install --no-cache-dir . && useradd --system --uid 1000 kling
USER kling
EXPOSE 8000
CMD ["gunicorn", "--config", "python:webhook.gunicorn_conf", "--bind", "0.0.0.0:8000", "--workers", "4", "webhook:create_app()"]
