# Multi-stage image of scalemesh itself. Build: docker build -t scalemesh .
# Run: docker run -p 8080:8080 -v /var/run/docker.sock:/var/run/docker.sock \
#        -v scalemesh-data:/data scalemesh
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock ./
COPY migrations ./migrations
COPY src ./src
COPY templates ./templates
COPY static ./static
COPY config.example.toml ./
RUN cargo build --release --locked && strip target/release/scalemesh

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /data scalemesh && mkdir -p /data && chown scalemesh /data
COPY --from=build /src/target/release/scalemesh /usr/local/bin/scalemesh
ENV SCALEMESH_SERVER__LISTEN=0.0.0.0:8080 \
    SCALEMESH_SERVER__DATA_DIR=/data
WORKDIR /data
EXPOSE 8080
# The build runner talks to Docker through the socket mounted at run time; the user
# running scalemesh needs access to it (e.g. --group-add of the socket's group).
# Build workspaces are bind-mounted into build containers by path, and that path is
# resolved by the Docker daemon on the host: mount the data directory at the same
# path inside and outside (-v /srv/scalemesh:/srv/scalemesh -e
# SCALEMESH_SERVER__DATA_DIR=/srv/scalemesh), or set builder.work_dir to such a path.
USER scalemesh
ENTRYPOINT ["scalemesh"]
CMD ["serve"]
