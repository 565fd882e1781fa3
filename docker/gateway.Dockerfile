# syntax=docker/dockerfile:1
# The HTTP gateway: slim Python, no torch, runs as an unprivileged user. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t unclip-gateway:0.1.0 .
ARG PYTHON_VERSION=3.12

# The full Python image has a C toolchain, for any dependency that has no wheel for the build platform.
FROM python:${PYTHON_VERSION}-bookworm AS build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only the packaging metadata, `service` and the torch-free `models/contract.py`: without the rest of
# `models/` the image carries no torch code and no checkpoint, and anything on the gateway's import path
# that reaches for them fails this build.
COPY pyproject.toml README.md ./
COPY models/__init__.py models/contract.py models/
COPY service/ service/
RUN pip install --no-cache-dir . \
 && python -I -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
 && python -I -c "import service.serve, service.gateway.app"

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin unclip
# Same interpreter path (/usr/local/bin/python3.x) in both stages, so the copied venv runs unchanged.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UNCLIP_HOST=0.0.0.0 \
    UNCLIP_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('UNCLIP_PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["unclip"]
CMD ["gateway"]
