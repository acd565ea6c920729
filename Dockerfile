# bids_muscle as a BIDS App container (CPU only). Build with "make image"
# (docs/containers.md), which tags bids_muscle:<version> and :latest:
#   make image                          python:3.12-slim, torch from PyTorch's CPU wheel index
#   make image TORCH_WHEELS=/opt/wheels torch from a local wheel folder; a base image made
#                                       from Debian packages when the base cannot be pulled
# or by hand (BuildKit is needed for the RUN --mount lines):
#   DOCKER_BUILDKIT=1 docker build -t bids_muscle:0.1.0 .
# Run:
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/bids:/data:ro -v /data/out:/out bids_muscle:0.1.0 /data /out participant
#
# Build arguments: BASE (any image with python3 >= 3.11 and its venv module),
# TORCH_INDEX (where torch comes from when docker/wheels/ holds no torch wheel),
# VERSION (the version label). A CA bundle for a TLS-inspecting proxy is passed
# as the build secret "ca_bundle" (docker build --secret id=ca_bundle,src=FILE)
# and is never stored in a layer.
ARG BASE=python:3.12-slim

# ---------------------------------------------------------------- build stage
FROM ${BASE} AS build

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# One virtual environment in /opt/bids_muscle holds everything: torch (the CPU
# build), the package with its models and label tables, and the versions of
# docker/constraints.txt. torch comes first so that installing the package does
# not pull the CUDA wheels: from a wheel in docker/wheels/ when there is one
# (its own dependencies from PyPI), otherwise from TORCH_INDEX.
COPY docker/constraints.txt /tmp/constraints.txt
RUN --mount=type=bind,source=docker/wheels,target=/wheels \
    --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && python3 -m venv /opt/bids_muscle \
    && if ls /wheels/torch-*.whl >/dev/null 2>&1; then \
           /opt/bids_muscle/bin/pip install --no-cache-dir --find-links /wheels -c /tmp/constraints.txt torch==2.13.0; \
       else \
           /opt/bids_muscle/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX}" torch==2.13.0; \
       fi

COPY pyproject.toml README.md LICENSE /tmp/src/
COPY bids_muscle /tmp/src/bids_muscle
COPY templates /tmp/src/templates

# The package, then what a container never uses: pip's wheel caches and the
# C++ headers and CMake files of torch (for building extensions). A link at a
# fixed path names the TemplateFlow folder shipped in the package, whatever the
# Python version of the base image.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/bids_muscle/bin/pip install --no-cache-dir -c /tmp/constraints.txt /tmp/src \
    && site=$(/opt/bids_muscle/bin/python -c "import sysconfig; print(sysconfig.get_path('purelib'))") \
    && rm -rf "${site}/torch/include" "${site}/torch/share/cmake" \
    && ln -s "${site#/opt/bids_muscle/}/bids_muscle/data/templateflow" /opt/bids_muscle/templateflow \
    && /opt/bids_muscle/bin/python -c "import os, sys; from importlib.resources import files; shipped = os.path.realpath(str(files('bids_muscle.data') / 'templateflow')); sys.exit(0 if os.path.realpath('/opt/bids_muscle/templateflow') == shipped and os.path.isdir(shipped) else '/opt/bids_muscle/templateflow does not lead to ' + shipped)"

# ---------------------------------------------------------------- runtime image
FROM ${BASE}

ARG BASE
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="bids_muscle" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${BASE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bids-muscle/bids_muscle" \
      org.opencontainers.image.description="BIDS App for quantitative MRI of thigh and calf muscles: T2, water T2, fat fraction and MTR maps, muscle segmentation, IMAT and per-muscle biomarkers"

# Offline defaults (no nipype version check, no TemplateFlow download, no
# display); TEMPLATEFLOW_HOME is the folder shipped inside the package.
ENV PATH=/opt/bids_muscle/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    TEMPLATEFLOW_HOME=/opt/bids_muscle/templateflow \
    HOME=/home/bids_muscle

COPY --from=build /opt/bids_muscle /opt/bids_muscle

# HOME is writable by any uid, so that "docker run -u <uid>" still has a
# place for caches (matplotlib) and for the default work folder.
RUN useradd --create-home --home-dir /home/bids_muscle --uid 1000 --user-group --shell /bin/bash bids_muscle \
    && chmod 1777 /home/bids_muscle \
    && bids_muscle --version

USER 1000:1000
WORKDIR /home/bids_muscle

ENTRYPOINT ["bids_muscle"]
