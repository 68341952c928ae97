# syntax=docker/dockerfile:1
# The API image: regtune's service WITHOUT torch or ray. The service submits job
# drivers through the Ray Jobs REST API over HTTP, so it needs neither.
# docker-compose.yml also runs `mlflow server` from this image: the server then has
# exactly the MLflow the clients have, and psycopg2 for its PostgreSQL backend.
#
#   docker build -f docker/api.Dockerfile -t regtune-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/regtune
# The service's own requirements (tests/deploy/test_images.py keeps this list in
# step with pyproject.toml and with what the service imports) ...
COPY docker/requirements-api.txt docker/check_image.py ./
RUN pip install -r requirements-api.txt
# ... then the package itself with --no-deps: pyproject also lists torch and ray.
COPY pyproject.toml README.md ./
COPY search_spaces ./search_spaces
COPY service ./service
COPY workers ./workers
RUN pip install --no-deps . && rm -rf build ./*.egg-info && python check_image.py api

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/regtune --create-home regtune \
 && mkdir -p /shared/ray_results /shared/datasets /mlartifacts \
 && chown regtune:regtune /var/lib/regtune /mlartifacts
USER regtune
ENV REGTUNE_DATA_DIR=/var/lib/regtune
EXPOSE 8000 5000
CMD ["regtune", "serve", "--host", "0.0.0.0", "--port", "8000"]
