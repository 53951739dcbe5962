#!/bin/sh
# Initialise the cluster on first start (the user, its password, the database), then run postgres.
set -eu
bin=$(echo /usr/lib/postgresql/*/bin)
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile"
    "$bin/initdb" -D "$PGDATA" -U "${POSTGRES_USER:=postgres}" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    "$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses=''" start
    if [ "${POSTGRES_DB:=$POSTGRES_USER}" != postgres ]; then  # initdb makes only "postgres"
        "$bin/createdb" -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop
fi
exec "$bin/postgres" -D "$PGDATA" -c listen_addresses='*'
