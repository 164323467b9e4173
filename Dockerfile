# syntax=docker/dockerfile:1
# The release image: built with the locked dependencies, run as non-root on
# a distroless base with glibc (aws-lc is linked statically into the binary).
# The toolchain of rust-toolchain.toml.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin meshroot \
 && install -m 0755 target/release/meshroot /meshroot

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /meshroot /usr/local/bin/meshroot
USER 65532:65532
EXPOSE 15012 15014
ENTRYPOINT ["/usr/local/bin/meshroot"]
CMD ["serve"]
