# One image per service: docker build --build-arg SERVICE=ingest -t prognos-ingest .
# The workspace lock file pins every dependency; only the chosen service's are installed,
# so the ingest image carries no TensorFlow. SERVICE=cli builds the command line `prognos`
# (compose's secrets job runs it).
FROM python:3.11-slim AS build
ARG SERVICE
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy
COPY . .
RUN uv sync --frozen --no-dev --package prognos-${SERVICE}

FROM python:3.11-slim
ARG SERVICE
ENV SERVICE=${SERVICE} PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
WORKDIR /app
COPY --from=build /app /app
RUN useradd --system --uid 10001 prognos && mkdir -p /var/lib/prognos && chown prognos /var/lib/prognos
# Mount points of compose's secrets volumes: a new named volume takes the owner and mode of
# the directory it is first mounted on, so the secrets job, running as prognos, can write
# to it, and each service, as prognos, can read its own key. /secrets/nats holds only the
# NATS servers' authorization block (public keys), which the nats image's user must read.
RUN install -d -o prognos -m 0700 /secrets/issuer /secrets/ingest /secrets/registry \
    /secrets/inference /secrets/scheduler \
    && install -d -o prognos -m 0755 /secrets/nats
USER prognos
ENV PROGNOS_DATA_DIR=/var/lib/prognos
EXPOSE 50051
ENTRYPOINT ["sh", "-c", "exec python -m prognos.${SERVICE} \"$@\"", "--"]
CMD ["serve"]
