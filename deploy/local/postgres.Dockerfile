# A stand-in for the official postgres image, for the live test on a machine that can pull no
# image: Debian's PostgreSQL on the local base (`python3 deploy/images.py local`), taking the
# same POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD and data folder.
ARG BASE_IMAGE=doppel-local/debian
FROM ${BASE_IMAGE}
COPY deploy/local/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
# The data folder exists, owned by postgres, so a fresh named volume there inherits the owner.
RUN mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
    && chmod 700 /var/lib/postgresql/data && chmod 755 /usr/local/bin/postgres-entrypoint
# hadolint ignore=DL3066
USER postgres
ENV PGDATA=/var/lib/postgresql/data
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
