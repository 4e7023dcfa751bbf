# PostgreSQL (Debian's package) and an S3 API (moto's server) for the cluster test, from the same Debian base
# as the ap-sweeps image, so the test needs no registry image. Production uses compose.yaml's pinned images.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG MOTO_VERSION=5.2.5
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian bookworm's current PostgreSQL 15 (pinning the point release would break on its next security update).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin s3 \
    && python3 -m venv /opt/moto \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && /opt/moto/bin/pip install --no-cache-dir "moto[server]==${MOTO_VERSION}"
COPY tests/cluster/postgres-start.sh /usr/local/bin/postgres-start
ENV PATH=/usr/lib/postgresql/15/bin:/opt/moto/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# hadolint ignore=DL3066
USER postgres
