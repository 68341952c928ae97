# syntax=docker/dockerfile:1
# The Ray image, for ray-head and ray-worker: a CUDA build of PyTorch from the base
# image, Ray with Tune and the dashboard/Jobs API, the search and training
# dependencies, and regtune itself (the head runs job drivers, workers run trials).
#
#   docker build -f docker/worker.Dockerfile -t regtune-worker .
#
# The tag must carry the torch version pinned in pyproject.toml (check_image.py
# fails the build otherwise); pick another CUDA line with
# --build-arg PYTORCH_IMAGE=pytorch/pytorch:<torch>-cuda<x.y>-cudnn9-runtime.
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-runtime
FROM ${PYTORCH_IMAGE}

# The interpreter that has all of the above; the API passes it to Ray as the
# drivers' interpreter (REGTUNE_DRIVER_PYTHON in docker-compose.yml).
ARG DRIVER_PYTHON=/opt/conda/bin/python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

WORKDIR /opt/regtune
COPY docker/requirements-worker.txt docker/check_image.py ./
# torch is not in requirements-worker.txt: nothing may replace the base image's CUDA build.
RUN "${DRIVER_PYTHON}" -m pip install -r requirements-worker.txt
COPY pyproject.toml README.md ./
COPY search_spaces ./search_spaces
COPY service ./service
COPY workers ./workers
RUN "${DRIVER_PYTHON}" -m pip install --no-deps . && rm -rf build ./*.egg-info \
 && "${DRIVER_PYTHON}" check_image.py worker

RUN mkdir -p /shared/ray_results /shared/datasets
# 6379 GCS, 8265 dashboard + Jobs API, 52365 dashboard agent (health check).
EXPOSE 6379 8265 52365
CMD ["ray", "start", "--help"]
