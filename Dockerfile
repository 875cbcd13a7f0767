# Cairn's container image: a release build, then a final image FROM scratch
# holding only the binary, the shared libraries it loads, a non-root user and
# the data directory (scripts/rootfs.sh assembles it).
#
#   docker build -t cairn .
#   docker run -p 5000:5000 -v cairn-data:/var/lib/cairn cairn
#
# The final stage is also what tests/api/container.rs builds (from the binary
# cargo built, with `--from=build /rootfs/` read as its own rootfs directory),
# so keep its COPY lines in that form.

# ---- build --------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not on every change to Cairn's code.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir -p src/bin tests/api \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/cairn-bench.rs \
    && echo 'fn main() {}' > tests/api/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin cairn \
    && rm -rf src

# Cairn itself. The commit is passed in because the context has no .git:
#   docker build --build-arg CAIRN_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG CAIRN_GIT_COMMIT=unknown
ENV CAIRN_GIT_COMMIT=${CAIRN_GIT_COMMIT}
COPY src src
COPY migrations migrations
# COPY keeps the context's modification times, which may be older than the
# stub build's; touching the crate roots makes cargo rebuild them.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin cairn

COPY scripts/rootfs.sh scripts/rootfs.sh
RUN sh scripts/rootfs.sh target/release/cairn /rootfs

# ---- final --------------------------------------------------------------------
FROM scratch
COPY --from=build /rootfs/ /
COPY --chown=10001:10001 --from=build /rootfs/var/lib/cairn/ /var/lib/cairn/
USER 10001:10001
WORKDIR /var/lib/cairn
# 0.0.0.0 so the published port reaches it. With no account on a non-loopback
# address Cairn refuses to start: create one first (`cairn user add`, see
# README.md, "Production: docker compose"), or set CAIRN_AUTH__INSECURE_OPEN.
# Data defaults to SQLite and blobs in the volume; point CAIRN_DATABASE__URL
# and CAIRN_STORAGE__URL elsewhere for PostgreSQL and S3.
ENV CAIRN_LISTEN=0.0.0.0:5000 \
    CAIRN_DATABASE__URL=sqlite:///var/lib/cairn/cairn.db \
    CAIRN_STORAGE__URL=file:///var/lib/cairn/blobs \
    CAIRN_LOG__FORMAT=json
VOLUME /var/lib/cairn
EXPOSE 5000
# `cairn healthcheck` GETs /healthz on CAIRN_LISTEN (no shell or curl here).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/cairn", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/cairn"]
CMD ["serve"]
