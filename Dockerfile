# Not built in CI: these machines have no Docker engine. Kept in step with .ci/run.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap util-linux \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY config config
COPY accounts accounts
COPY marketplace marketplace
COPY inference inference
COPY billing billing
COPY workers workers
COPY templates templates
COPY static static
COPY manage.py ./
# A CUDA image would install a CUDA build of the same torch minor release instead.
RUN pip install --no-cache-dir -c constraints.txt '.[postgres]' \
    && DJANGO_SECRET_KEY=build MM_KEK_RING=build:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
       REDIS_URL=redis://localhost DJANGO_DEBUG=0 python manage.py collectstatic --noinput
ENV DJANGO_DEBUG=0 PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4", "--threads", "8"]
