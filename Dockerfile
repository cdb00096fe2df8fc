# mvssl-dist image. CPU by default; the deployment issue adds the GPU variant.
# The install step is the README's first set-up line's: `pip install -e .`.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/mvssl-dist
COPY pyproject.toml README.md ./
COPY mvssl_dist ./mvssl_dist
COPY pipelines ./pipelines
RUN pip install -e .
RUN mvssl --help >/dev/null
ENTRYPOINT ["mvssl"]
CMD ["--help"]
