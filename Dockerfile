# landslide-pipeline: `landslide app` (the default command) and every other `landslide` command.
#
#   docker build -t landslide-pipeline .
#   docker run --rm -p 8501:8501 landslide-pipeline                                   # the web app
#   docker run --rm -v "$PWD/runs:/app/runs" landslide-pipeline landslide scan --region iburi-2018 --out runs/x
#
# BASE_IMAGE: any Debian/Ubuntu image with Python 3.11, or without Python (then Debian's python3,
# 3.11 on bookworm, is installed with apt), e.g. a local debootstrap base (README "Container image").
# Build-time only (not kept in the image): PIP_CERT (a CA bundle pip trusts, e.g. bind-mounted by
# `podman build -v`), PIP_FIND_LINKS (a local wheel folder, e.g. with the torch CPU wheel),
# TORCH_INDEX_URL (an extra index for torch/torchvision: the CPU wheels by default; empty: none).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS python-base
ARG DEBIAN_FRONTEND=noninteractive
# python3 + venv when the base has none (a bare Debian). The wheels bundle their libraries (GDAL,
# PROJ, GEOS, OpenMP of torch) except the system's libc, libstdc++, libz and libexpat (rasterio's
# GDAL): libexpat1 is named here although Debian's python3 also brings it. ca-certificates: HTTPS to
# STAC sources at run time.
RUN set -eux; \
    pkgs="libexpat1 ca-certificates"; \
    if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        pkgs="$pkgs python3 python3-venv"; \
    fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, the base has {sys.version}"'

FROM python-base AS build
ARG PIP_CERT=
ARG PIP_FIND_LINKS=
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
WORKDIR /src
# Dependencies first (their own layer, rebuilt only when pyproject.toml or constraints.txt change),
# then the project itself: a regular (non-editable) install into /opt/venv, pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN set -eux; \
    [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    [ -n "$PIP_FIND_LINKS" ] || unset PIP_FIND_LINKS; \
    python3 -m venv /opt/venv; \
    python3 -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["app"]))' > /tmp/requirements.txt; \
    /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c constraints.txt -r /tmp/requirements.txt; \
    rm /tmp/requirements.txt
COPY . ./
RUN set -eux; \
    [ -n "$PIP_CERT" ] || unset PIP_CERT; \
    [ -n "$PIP_FIND_LINKS" ] || unset PIP_FIND_LINKS; \
    /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c constraints.txt ".[app]"; \
    test -f /opt/venv/lib/python3.11/site-packages/landslide_pipeline_torchvision.pth

FROM python-base
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120 \
    PREFECT_LOGGING_EXTRA_LOGGERS=tasks,models \
    LANDSLIDE_HOME=/app
# /app: the bundled sample and its catalog, prefect.yaml (its deployments' entrypoints are
# flows/*.py under $LANDSLIDE_HOME: a link to the installed package), runs/ and state/ (volumes).
WORKDIR /app
COPY data ./data
COPY data_catalog.yaml prefect.yaml ./
RUN set -eux; \
    useradd --create-home --uid 1000 --user-group --shell /bin/bash landslide; \
    ln -s /opt/venv/lib/python3.11/site-packages/flows /app/flows; \
    mkdir -p /app/runs /app/state /home/landslide/.prefect; \
    chown landslide:landslide /app /app/runs /app/state /home/landslide/.prefect; \
    landslide --version; \
    python -c "import torch, torchvision, segmentation_models_pytorch, rasterio, pyogrio, geopandas, \
prefect, distributed, streamlit, pydeck; print('imports ok, torch', torch.__version__)"
USER landslide
VOLUME ["/app/runs", "/app/state"]
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=8); sys.exit(0 if r.read().strip() == b'ok' else 1)"]
# No ENTRYPOINT: `docker run IMAGE landslide scan ...` (or prefect ..., dask ...) replaces the command.
# The app listens on every address of the container (it has no login: publish the port only where
# that is safe, e.g. -p 127.0.0.1:8501:8501).
CMD ["landslide", "app", "--host", "0.0.0.0", "--port", "8501"]
