# Imaging FHIR facade: slim, non-root, with a health check. Build: docker build -t imaging-fhir-facade .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv facade
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
WORKDIR /srv
COPY config ./config
USER facade
ENV FACADE_CONFIG=/srv/config/facade.toml \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
# 0.0.0.0 inside the container only: publish the port on the host's loopback or behind a proxy.
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8080", "--proxy-headers"]
