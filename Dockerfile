# bids_muscle as a BIDS App container (CPU only).
#   docker build -t bids_muscle:0.1.0 .
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out bids_muscle:0.1.0 /data /out participant
FROM python:3.12-slim

ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="bids_muscle" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/bids-muscle/bids_muscle" \
      org.opencontainers.image.description="BIDS App for quantitative MRI of thigh and calf muscles: T2, water T2, fat fraction and MTR maps, muscle segmentation, IMAT and per-muscle biomarkers"

# Offline defaults (no nipype version check, no TemplateFlow download, no
# display). TEMPLATEFLOW_HOME is the folder shipped inside the installed
# package; the install step below fails if the path does not match.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    TEMPLATEFLOW_HOME=/usr/local/lib/python3.12/site-packages/bids_muscle/data/templateflow \
    HOME=/home/bids_muscle

# CPU build of torch first, so that installing the package does not pull the CUDA wheels.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Only what the package needs; model weights and label tables under
# bids_muscle/data are package data and end up inside the image.
COPY pyproject.toml README.md LICENSE /tmp/src/
COPY bids_muscle /tmp/src/bids_muscle

# HOME is writable by any uid, so that "docker run -u <uid>" still has a
# place for caches (matplotlib) and for the default work folder.
RUN pip install --no-cache-dir /tmp/src \
    && rm -rf /tmp/src \
    && python -c "import os, sys; from importlib.resources import files; shipped = str(files('bids_muscle.data') / 'templateflow'); sys.exit(0 if shipped == os.environ['TEMPLATEFLOW_HOME'] and os.path.isdir(shipped) else 'TEMPLATEFLOW_HOME does not point at ' + shipped)" \
    && useradd --create-home --home-dir /home/bids_muscle --uid 1000 --user-group --shell /bin/bash bids_muscle \
    && chmod 1777 /home/bids_muscle

USER 1000:1000
WORKDIR /home/bids_muscle

ENTRYPOINT ["bids_muscle"]
