# The release image, for those with a Docker daemon. Built with the locked
# dependencies, run as non-root on a distroless base with glibc (aws-lc is
# linked statically into the binary), with the toolchain of
# rust-toolchain.toml. BuildKit's cache mounts (Docker 23 and later, no
# syntax image to fetch) keep the cargo registry and the build directory
# between builds, so a change to meshroot's sources does not rebuild its
# dependencies. .dockerignore keeps keys and build output out of the context.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin meshroot \
 && install -m 0755 target/release/meshroot /meshroot

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /meshroot /usr/local/bin/meshroot
USER 65532:65532
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/meshroot"]
CMD ["serve"]
