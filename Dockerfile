# mvssl-dist image: the package installed with the README's install step, `mvssl` on PATH.
#
#   CPU (default):  docker build -t mvssl-dist:0.1.0 .
#   GPU:            docker build -t mvssl-dist:0.1.0-gpu --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-gpu .
#
# The GPU variant starts from the official Ray CUDA image (drivers come from the node); torch 2.11.0's
# default wheels carry their own CUDA runtime, so the same install step serves both.
ARG BASE_IMAGE=python:3.11-slim

# ---- dependencies: a virtual environment with the pinned dependencies and not the package, so
# that a code change leaves this stage's ~6 GB (torch and its CUDA libraries) alone and an image
# push or a node's pull moves only the small layers after it
FROM ${BASE_IMAGE} AS dependencies
USER root
ENV PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /opt/mvssl-dist
COPY pyproject.toml ./
RUN mkdir mvssl_dist && touch README.md mvssl_dist/__init__.py \
    && pip install -e . && pip uninstall -y mvssl-dist && rm -r mvssl_dist README.md

# ---- runtime: the same base, that environment, then the package itself installed as the README does
FROM ${BASE_IMAGE} AS runtime
USER root
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH MVSSL_HOME=/opt/mvssl-dist
COPY --from=dependencies /opt/venv /opt/venv
WORKDIR /opt/mvssl-dist
COPY pyproject.toml README.md ./
COPY mvssl_dist ./mvssl_dist
COPY pipelines ./pipelines
COPY configs ./configs
RUN pip install -e .
# Login shells rebuild PATH from /etc/profile, which on Debian (python:3.11-slim) drops /opt/venv/bin;
# KubeRay starts every Ray pod with `bash -lc` and `ray up` runs its commands with `bash --login`.
RUN echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/mvssl-venv.sh
RUN mvssl --help >/dev/null && python -c "import ray, mlflow, torch, torchaudio, av" \
    && bash -lc 'command -v ray && command -v mvssl' | grep -q /opt/venv/bin/mvssl
CMD ["mvssl", "--help"]
