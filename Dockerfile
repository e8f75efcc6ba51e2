# The cachefs image: the CSI driver (`cachefs csi`), the mount helper and the CLI (warmup Jobs).
#   docker build -t cachefs/csi:0.1.0 .
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 libfuse3-dev pkg-config gcc util-linux \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cachefs ./cachefs
COPY meta ./meta
COPY mount ./mount
RUN pip install --no-cache-dir . \
 && ln -sf "$(command -v mount.cachefs)" /sbin/mount.cachefs \
 && apt-get purge -y gcc pkg-config && apt-get autoremove -y

ENTRYPOINT ["cachefs"]
CMD ["--help"]
