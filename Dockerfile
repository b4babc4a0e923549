# Imaging FHIR facade: Debian bookworm, the package in a virtualenv of Debian's python3, non-root, health check.
#
#   bash scripts/images          # this image, Orthanc's and Redis's; offline: the wheelhouse is made on the host
#   docker build --network host -t imaging-fhir-facade .   # wheelhouse/*.whl: offline; an empty wheelhouse/: PyPI
#   docker run --network host imaging-fhir-facade --host 127.0.0.1 --port 8181
#
# The entrypoint is the service (python -m app): arguments after the image name are its own (--host, --port,
# --config, --workers, --proxy-headers); settings come from FACADE_* variables (config/facade.toml lists them).
# docs/containers.md explains the wheelhouse, compose and the host-network rule.

FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
# python3-venv brings ensurepip (pip and setuptools wheels): no compiler, every dependency comes as a wheel.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/facade
COPY wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md /src/
COPY app /src/app
# With wheels in the build context (wheelhouse/, made by scripts/images with the same Debian python3 3.11.2):
# no network at all. Without: the package index (PIP_INDEX_URL and the like may be given as build args).
ARG PIP_INDEX_URL
RUN set -eu; \
    if ls /wheelhouse/*.whl >/dev/null 2>&1; then offline="--no-index --find-links /wheelhouse"; else offline=""; fi; \
    /opt/facade/bin/pip install --no-cache-dir --disable-pip-version-check $offline /src; \
    /opt/facade/bin/pip uninstall --yes --disable-pip-version-check pip setuptools

FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
# python3 only (the venv's interpreter is /usr/bin/python3); ca-certificates for an https PACS, EHR or JWK Set.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin facade
COPY --from=build /opt/facade /opt/facade
COPY config/facade.toml /etc/imaging-fhir-facade/facade.toml
COPY docker/facade/healthcheck.py /usr/local/lib/imaging-fhir-facade/healthcheck.py
ENV PATH=/opt/facade/bin:$PATH \
    FACADE_CONFIG=/etc/imaging-fhir-facade/facade.toml \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER facade:facade
WORKDIR /tmp
EXPOSE 8080
# GET /healthz on the port and address the service was started with (read from PID 1's arguments).
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "/usr/local/lib/imaging-fhir-facade/healthcheck.py"]
ENTRYPOINT ["python", "-m", "app"]
# On the host's network (docker run --network host) this is the host's loopback. In a container network of its
# own, pass --host 0.0.0.0 and publish the port on 127.0.0.1 (or behind a proxy).
CMD ["--host", "127.0.0.1", "--port", "8080"]
