# syntax=docker/dockerfile:1
# One image for every Ironflow service (`ironflow service <name>`) and the CLI.
#   docker build -t ironflow:dev .
#   docker run --rm -p 9123:9123 -e IRONFLOW_PORT=9123 ironflow:dev serve

# Build stage: install the project and its dependencies into a virtualenv that the runtime stage
# copies whole, so build inputs (sources, pip's caches, setuptools' build tree) stay out of the image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ironflow
WORKDIR /src
# Only what `pip install .` reads (pyproject's three source roots and its readme); see .dockerignore.
COPY pyproject.toml README.md ./
COPY sdk ./sdk
COPY gen ./gen
COPY services ./services
RUN /opt/ironflow/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/ironflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IRONFLOW_HOST=0.0.0.0
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without resolving the name.
RUN groupadd --system --gid 10001 ironflow \
 && useradd --system --uid 10001 --gid ironflow --home-dir /home/ironflow --create-home \
      --shell /usr/sbin/nologin ironflow
COPY --from=build /opt/ironflow /opt/ironflow
USER 10001:10001
WORKDIR /home/ironflow
ENTRYPOINT ["ironflow"]
CMD ["--help"]
