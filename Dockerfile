# One image per service: docker build --build-arg SERVICE=ingest -t prognos-ingest .
# The workspace lock file pins every dependency; only the chosen service's are installed,
# so the ingest image carries no TensorFlow.
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
USER prognos
ENV PROGNOS_DATA_DIR=/var/lib/prognos
EXPOSE 50051
ENTRYPOINT ["sh", "-c", "exec python -m prognos.${SERVICE} \"$@\"", "--"]
CMD ["serve"]
