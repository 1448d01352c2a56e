# The CDS server image: slim Python, non-root, health-checked. The product packages only: the demo
# EHR, tests, benchmarks and experiments stay out of it (and out of the wheel: pyproject.toml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cds ./cds
COPY fhir_mappings ./fhir_mappings
COPY hooks ./hooks
COPY models ./models
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 cds
COPY --from=build /install /usr/local
WORKDIR /home/cds
USER cds
ENV CDS_HOST=0.0.0.0 \
    CDS_PORT=8000 \
    CDS_VAR_DIR=/home/cds/var \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["cds", "serve"]
