# syntax=docker/dockerfile:1
# Multi-stage build: a full Rust toolchain builds the binary; the runtime image holds only the
# binary, CA certificates and a non-root user.
#
#   docker build -t auditgate .
#   docker run -p 8080:8080 -v $PWD/auditgate.toml:/etc/auditgate/auditgate.toml:ro \
#              -v auditgate-data:/var/lib/auditgate auditgate

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY config ./config
COPY tests ./tests
RUN cargo build --release --locked --bin auditgate && strip target/release/auditgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 auditgate \
 && useradd --system --uid 10001 --gid auditgate --home-dir /var/lib/auditgate --shell /usr/sbin/nologin auditgate \
 && mkdir -p /etc/auditgate /var/lib/auditgate \
 && chown auditgate:auditgate /var/lib/auditgate
COPY --from=build /src/target/release/auditgate /usr/local/bin/auditgate
COPY config/auditgate.example.toml /etc/auditgate/auditgate.example.toml
USER auditgate
WORKDIR /var/lib/auditgate
VOLUME ["/etc/auditgate", "/var/lib/auditgate"]
EXPOSE 8080 9090
ENV AUDITGATE_CONFIG=/etc/auditgate/auditgate.toml
# Relative data paths of the config ([store] path, spill and stream files, file: head targets)
# land in the data volume, wherever the config file is mounted.
ENV AUDITGATE_DATA_DIR=/var/lib/auditgate
# The image has no curl: auditgate asks its own admin listener (127.0.0.1:9090 by default; pass
# --url if [admin] listen says otherwise). /healthz, not /readyz: a store outage is ridden out
# by the spill file and should not get the container restarted.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/auditgate", "health", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/auditgate"]
CMD ["run"]
