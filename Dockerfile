# syntax=docker/dockerfile:1
#
# One build for every keel image. Pick the service with --target:
#
#   docker build --target auth      -t keel/auth .
#   docker build --target gateway   -t keel/gateway .
#   docker build --target inference -t keel/inference .
#   docker build --target postproc  -t keel/postproc .
#
# Each service binary answers `<binary> healthcheck` (exit 0 when its own gRPC health endpoint
# reports SERVING), which the compose file and the images' HEALTHCHECK use; every image also
# carries keelctl for operators.

# ---------------------------------------------------------------------------
# builder: compiles all binaries once; the stages below only copy them.
# ---------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /work
COPY . .
# target/ lives in a cache mount, which is not part of the image layer, so the
# binaries are copied out to /out inside the same RUN.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git/db,sharing=locked \
    --mount=type=cache,target=/work/target,sharing=locked \
    cargo build --release --locked \
        -p keel-auth -p keel-gateway -p keel-inference -p keel-postproc -p keel-cli \
 && mkdir -p /out \
 && for bin in keel-auth keel-gateway keel-inference keel-postproc keelctl; do \
        install -m 0755 "target/release/${bin}" "/out/${bin}"; \
    done

# ---------------------------------------------------------------------------
# runtime: distroless (glibc + libgcc + CA certificates, no shell), non-root.
# Same Debian release as the builder, so the glibc matches.
# ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/keelctl /usr/local/bin/keelctl
USER nonroot:nonroot

# In a container the servers must listen on every interface, not loopback
# (the binaries' default); the environment can still override these.

FROM runtime AS auth
COPY --from=builder /out/keel-auth /usr/local/bin/keel-auth
ENV KEEL_AUTH_GRPC_ADDR=0.0.0.0:50052 \
    KEEL_AUTH_HTTP_ADDR=0.0.0.0:8081 \
    KEEL_AUTH_ADMIN_ADDR=0.0.0.0:9092
EXPOSE 50052 8081 9092
HEALTHCHECK --interval=5s --timeout=4s --retries=3 CMD ["/usr/local/bin/keel-auth", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keel-auth"]

FROM runtime AS inference
COPY --from=builder /out/keel-inference /usr/local/bin/keel-inference
ENV KEEL_INFERENCE_GRPC_ADDR=0.0.0.0:50053 \
    KEEL_INFERENCE_ADMIN_ADDR=0.0.0.0:9093
EXPOSE 50053 9093
HEALTHCHECK --interval=5s --timeout=4s --retries=3 CMD ["/usr/local/bin/keel-inference", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keel-inference"]

FROM runtime AS postproc
COPY --from=builder /out/keel-postproc /usr/local/bin/keel-postproc
ENV KEEL_POSTPROC_GRPC_ADDR=0.0.0.0:50054 \
    KEEL_POSTPROC_ADMIN_ADDR=0.0.0.0:9094
EXPOSE 50054 9094
HEALTHCHECK --interval=5s --timeout=4s --retries=3 CMD ["/usr/local/bin/keel-postproc", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keel-postproc"]

# Last stage: the default when no --target is given.
FROM runtime AS gateway
COPY --from=builder /out/keel-gateway /usr/local/bin/keel-gateway
ENV KEEL_GATEWAY_GRPC_ADDR=0.0.0.0:50051 \
    KEEL_GATEWAY_HTTP_ADDR=0.0.0.0:8080 \
    KEEL_GATEWAY_ADMIN_ADDR=0.0.0.0:9091
EXPOSE 50051 8080 9091
HEALTHCHECK --interval=5s --timeout=4s --retries=3 CMD ["/usr/local/bin/keel-gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keel-gateway"]
