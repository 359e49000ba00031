# The goverse binary in a small image: built with the dist profile (whole-program
# optimisation), run as an unprivileged user. One image for nodes, gates and the tools:
#   docker build -t goverse .
#   docker run --rm goverse node --config /etc/goverse/cluster.yaml --node-id node-1
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --bin goverse \
    && cp target/dist/goverse /goverse

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/goverse goverse
COPY --from=build /goverse /usr/local/bin/goverse
USER 10001
WORKDIR /var/lib/goverse
# Node service, gate gRPC, gate HTTP, operations (metrics, health).
EXPOSE 47000 49000 8080 9101
ENTRYPOINT ["/usr/local/bin/goverse"]
CMD ["--help"]
