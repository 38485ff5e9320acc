# sluice image: build in the official Rust image, run on Debian slim.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/sluice --create-home sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY examples/ /etc/sluice/examples/
USER sluice
WORKDIR /var/lib/sluice
EXPOSE 9464
ENTRYPOINT ["sluice"]
