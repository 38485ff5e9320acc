# sluice image: build in the official Rust image, run on Debian slim. Both stages are Debian
# bookworm, so the shared libraries the binary is linked against in the first are the ones
# the second installs. How this was checked (no registry is reachable to pull the base
# images): README.md, "The container image".
FROM rust:1-bookworm AS build
# cmake: rdkafka's `cmake-build` feature builds librdkafka with CMake (not in the Rust
# image). libssl-dev and pkg-config: rdkafka's `ssl` (OpenSSL, also the TLS of the libcurl
# that `curl-static` compiles in); zlib1g-dev: librdkafka's compression (libz-sys links the
# system zlib). The Rust image has some of these already; naming them keeps the build from
# depending on that. SQLite is compiled in (rusqlite `bundled`), MongoDB's TLS is rustls.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
# What the binary links (`ldd sluice`): libssl.so.3 and libcrypto.so.3 (libssl3), libz.so.1
# (zlib1g), libgcc_s.so.1 (libgcc-s1), libc/libm (libc6); the last two are in every Debian
# image. ca-certificates: the CA bundle in /etc/ssl/certs that librdkafka's OpenSSL uses for
# TLS to a managed Kafka (the MongoDB driver's rustls carries its own Mozilla roots; a
# private CA goes in the URI's tlsCAFile).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home /var/lib/sluice --create-home sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY examples/ /etc/sluice/examples/
# Numeric, so that Kubernetes' runAsNonRoot can verify it (deploy/kubernetes/sluice.yaml).
USER 10001:10001
WORKDIR /var/lib/sluice
EXPOSE 9464
ENTRYPOINT ["sluice"]
