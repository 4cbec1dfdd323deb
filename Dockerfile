# syntax=docker/dockerfile:1
# Cairn container image: one binary for every role (`up`, `serve`, `collect`).
#
#   docker build -t cairn:0.1.0 .
#
# deploy/README.md: pushing to a registry, importing into k3s, running each
# role. The build stage fetches crates from crates.io; the runtime image has
# no shell and no package manager.

# ---- build
# Needs BuildKit (docker buildx, podman, nerdctl); the cache mounts keep
# crates and compiled dependencies between builds.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package cairn --bin cairn \
 && mkdir -p /out/var/lib/cairn /out/var/lib/cairn-collector \
 && install -m 0755 -s target/release/cairn /out/cairn

# ---- journalctl for the collector's [collector.journal] (it runs
# `journalctl --output=json --follow`): the binary and the shared libraries
# it needs beyond glibc/libgcc (libsystemd-shared, zstd, lz4, …), about
# 13 MB, from the same Debian release as the runtime base.
FROM debian:bookworm-slim AS journal
COPY deploy/docker/journalctl-bundle.sh /usr/local/bin/journalctl-bundle.sh
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd \
 && sh /usr/local/bin/journalctl-bundle.sh /out \
 && rm -rf /var/lib/apt/lists/*

# ---- runtime: glibc + libgcc (what `cairn` links) and journalctl, ~40 MB
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=journal /out/ /
COPY --from=build /out/cairn /usr/local/bin/cairn
# Data directories owned by the image's non-root user (65532); the collector
# runs as root in Kubernetes (deploy/kubernetes/base/collector.yaml) to read
# the node's logs.
COPY --from=build --chown=65532:65532 /out/var/lib/ /var/lib/
USER 65532:65532
EXPOSE 3100
# `serve` listens on 127.0.0.1 by default; in a container listen everywhere.
ENTRYPOINT ["/usr/local/bin/cairn"]
# --insecure: inside a container 0.0.0.0 is the only address a published
# port reaches, and [auth] is off until a config file turns it on
# (docs/auth.md); without it `cairn serve` refuses a non-loopback address.
# Publish the port only to networks you trust, or mount a config with [auth].
CMD ["serve", "--listen", "0.0.0.0:3100", "--data-dir", "/var/lib/cairn", "--insecure"]
