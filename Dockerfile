# gomemlimit-operator image: docker build -t gomemlimit-operator:0.1.0 .
#
# The same layout as tests/cluster/operator_image.py, which builds it without a daemon or a
# registry (`make image`); tests/cluster/test_operator_image.py keeps the two in step (user,
# entrypoint, virtualenv path, environment, pruned paths, pins).
#
# The base is pinned through BASE_IMAGE. Without a registry, use the debootstrap base that
# `make image` caches (already pruned, python3 included):
#   docker import ~/.cache/gomemlimit-operator/images/base-bookworm-<key>/rootfs.tar gomemlimit.local/bookworm-minbase:<key>
#   docker build --network host --build-arg BASE_IMAGE=gomemlimit.local/bookworm-minbase:<key> -t gomemlimit-operator:0.1.0 .
ARG BASE_IMAGE=debian:bookworm-20250520-slim

# python3 (bookworm's 3.11) and ca-certificates, nothing else: no compilers. Layer mtimes
# are not trusted (the daemon-less build zeroes them), so bytecode is hash-based, unchecked:
# a read-only root filesystem never needs to recompile it.
FROM ${BASE_IMAGE} AS base
RUN set -eux; \
    if ! command -v python3 >/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates; \
    fi; \
    rm -rf /var/cache/apt/* /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/* \
        /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian/*; \
    python3 -m compileall -q -f --invalidation-mode unchecked-hash /usr/lib/python3.11 /usr/lib/python3

# The virtualenv at /opt/gomemlimit: the project's wheel and its runtime dependencies (binary
# wheels only), installed by the base's own Python with a pip that stays in this stage.
FROM base AS build
ARG PIP_VERSION=26.3
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv; \
    python3 -m venv /opt/pip; \
    /opt/pip/bin/pip install --no-cache-dir "pip==${PIP_VERSION}"
COPY pyproject.toml README.md /src/
COPY operator /src/operator
RUN set -eux; \
    SOURCE_DATE_EPOCH=315532800 /opt/pip/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src; \
    python3 -m venv --without-pip /opt/gomemlimit; \
    /opt/pip/bin/pip --python /opt/gomemlimit/bin/python install --no-cache-dir --no-compile \
        --only-binary=:all: /wheels/gomemlimit_operator-*.whl; \
    cd /opt/gomemlimit/lib/python3.11/site-packages; \
    rm -rf kubernetes/aio certifi/tests websocket/tests; \
    /opt/gomemlimit/bin/python -m compileall -q -f --invalidation-mode unchecked-hash /opt/gomemlimit/lib; \
    /opt/gomemlimit/bin/python -c "import kopf, kubernetes, gomemlimit_operator.runtime.app"; \
    /opt/gomemlimit/bin/gomemlimit version

FROM base
ARG VERSION=0.1.0
COPY --from=build /opt/gomemlimit /opt/gomemlimit
RUN echo 'gomemlimit:x:65532:65532:gomemlimit:/tmp:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'gomemlimit:x:65532:' >> /etc/group
ENV PATH=/opt/gomemlimit/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    LANG=C.UTF-8
LABEL org.opencontainers.image.title=gomemlimit-operator \
      org.opencontainers.image.version=${VERSION} \
      org.opencontainers.image.source=https://github.com/gomemlimit/gomemlimit-operator \
      org.opencontainers.image.licenses=Apache-2.0
# Numeric, so runAsNonRoot can check it. Nothing is written outside /tmp.
USER 65532:65532
WORKDIR /
# 9443 webhook (TLS), 8080 /metrics, 8081 /healthz and /readyz
EXPOSE 9443 8080 8081
ENTRYPOINT ["/opt/gomemlimit/bin/gomemlimit"]
CMD ["operator"]
