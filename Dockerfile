# The temporal-observer image: one binary (dynamically linked to glibc's libc and libm and to
# libgcc_s, all of which distroless `cc` holds; `objdump -p` lists them) on a distroless base.
# Build from the repository root: docker build -t temporal-observer .
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates curl gcc libc6-dev python3 python3-pip sudo \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# The same set-up as everywhere else: Debian's BPF toolchain, bpf-linker, then the build.
RUN cargo xtask setup && cargo build --release -p observer

FROM gcr.io/distroless/cc-debian12
COPY --from=build /src/target/release/temporal-observer /usr/local/bin/temporal-observer
ENTRYPOINT ["/usr/local/bin/temporal-observer"]
CMD ["watch"]
