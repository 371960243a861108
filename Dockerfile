# Builds both binaries, `lode` (the server) and `lode-shipper`, into one slim image.
#   docker build -t lode:dev .
#   docker run -p 3100:3100 lode:dev lode serve
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lode -p lode-shipper \
 && mkdir -p /out \
 && cp target/release/lode target/release/lode-shipper /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 lode \
 && useradd --system --uid 10001 --gid lode --home-dir /var/lib/lode lode \
 && mkdir -p /var/lib/lode /var/lib/lode-shipper \
 && chown lode:lode /var/lib/lode
COPY --from=build /out/lode /out/lode-shipper /usr/local/bin/
# The server runs unprivileged; the shipper is run as root by its manifests because
# container log files are readable by root only.
USER 10001
WORKDIR /var/lib/lode
EXPOSE 3100 3101
ENTRYPOINT []
CMD ["lode", "serve"]
