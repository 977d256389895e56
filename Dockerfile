# gomemlimit-operator image. Build: docker build -t gomemlimit-operator:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin gomemlimit
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 65532:65532
# 9443 webhook (TLS), 8080 /metrics, 8081 /healthz and /readyz
EXPOSE 9443 8080 8081
ENTRYPOINT ["gomemlimit"]
CMD ["operator"]
