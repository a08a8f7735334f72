# The temporal-observer image, where a registry is reachable: the same image `cargo xtask dist`
# builds without one. Its base is a Debian 12 root of libc6 and libgcc-s1 only (what the binary
# links: `objdump -p` lists libc, libm and libgcc_s), made by the same mmdebstrap command from
# the same packages; then the binary. Build from the repository root:
#   docker build -t temporal-observer .     (or podman build)
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libc6-dev mmdebstrap python3 python3-pip sudo \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# The same set-up as everywhere else: Debian's BPF toolchain, bpf-linker, then the build.
RUN cargo xtask setup && cargo build --release -p observer
RUN mmdebstrap --variant=extract --mode=root --quiet --include=libc6,libgcc-s1 \
        bookworm /base

FROM scratch
COPY --from=build /base/ /
COPY --from=build /src/target/release/temporal-observer /usr/bin/temporal-observer
ENTRYPOINT ["/usr/bin/temporal-observer"]
CMD ["watch"]
