# CI only: a stand-in for vllm/vllm-openai (no registry here) with what Dockerfile.model
# relies on: python3 with pip, PyYAML, pydantic and psutil, and a `vllm` whose --help works.
# It serves nothing by itself: CI builds Dockerfile.model on it to catch broken COPY/RUN
# steps, and the multi-node test mounts real vLLM's CPU build into the result
# (compose.multinode-cpu.yml; its base has the libraries that build links to).
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
COPY docker/constraints.txt /tmp/constraints.txt
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt pyyaml pydantic psutil \
    && printf '#!/bin/sh\necho "usage: vllm {serve,chat,complete} (CI stand-in)"\n' >/opt/venv/bin/vllm \
    && chmod +x /opt/venv/bin/vllm
ENV PATH=/opt/venv/bin:$PATH
