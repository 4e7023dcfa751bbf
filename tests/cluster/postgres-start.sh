#!/bin/bash
# Initialise a PostgreSQL cluster on first start (user and database "mlflow", password from the Docker secret),
# then run the server in the foreground. Reachable only on the compose project's private network.
set -euo pipefail
data=/var/lib/postgresql/data
if [[ ! -s $data/PG_VERSION ]]; then
    initdb --pgdata="$data" --username=postgres --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    echo "host all all 0.0.0.0/0 scram-sha-256" >>"$data/pg_hba.conf"
    password=$(cat /run/secrets/postgres_password)
    postgres --single -D "$data" postgres >/dev/null <<SQL
CREATE USER mlflow PASSWORD '$password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
fi
exec postgres -D "$data" -c listen_addresses='*' -c unix_socket_directories=/tmp
