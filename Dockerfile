# syntax=docker/dockerfile:1
# One image, three binaries: /usr/local/bin/{api,worker,loadgen}. Compose picks the binary per
# service with `command:`. Base images come in as build args so .env is the one place to bump them.
ARG RUST_IMAGE=rust:1.95.0-bookworm
# distroless publishes no versioned tags; :nonroot tracks Debian 12 security updates. Pin a
# digest here (RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:…) for reproducible builds.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# --- chef: the toolchain plus cargo-chef, which turns the manifests into a cacheable "recipe" ---
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# --- planner: the recipe changes only when Cargo.toml / Cargo.lock change ---
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# --- builder: dependencies in their own layer (rebuilt only when the recipe changes), then our code ---
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin api --bin worker --bin loadgen

# --- runtime: glibc 2.36 (bookworm) like the builder, no shell, uid 65532 ---
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="jobstack" \
      org.opencontainers.image.description="jobstack api, worker and loadgen: an Axum job API and a RabbitMQ worker, fully observable" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /src/target/release/api /src/target/release/worker /src/target/release/loadgen /usr/local/bin/
USER nonroot:nonroot
ENV LOG_FORMAT=json
EXPOSE 8080 8081
# No shell in the image: health checks run `api healthcheck` / `worker healthcheck` (GET /readyz).
CMD ["/usr/local/bin/api"]
