#!/usr/bin/env bash
# Create the cluster's secrets (Ray auth token, PostgreSQL, S3 and MLflow admin passwords) as files that
# compose.yaml mounts as Docker secrets. Existing files are kept, so re-running never locks a cluster out.
# Usage: docker/make-secrets.sh [DIR]   (default: docker/secrets; set AP_SECRETS_DIR to the same DIR for compose)
set -euo pipefail
dir="${1:-$(dirname "$0")/secrets}"
umask 077
mkdir -p "$dir"
chmod 0700 "$dir" # only the operator can reach the files ...
for name in ray_auth_token postgres_password s3_access_key s3_secret_key mlflow_admin_password; do
    if [[ ! -s "$dir/$name" ]]; then
        bytes=32
        [[ $name == s3_access_key ]] && bytes=10 # S3 access key ids are 20 characters
        python3 -c "import secrets; print(secrets.token_hex($bytes), end='')" >"$dir/$name"
    fi
    chmod 0644 "$dir/$name" # ... and the containers' non-root users can read their bind-mounted copy
done
echo "secrets in $dir (Ray token: $dir/ray_auth_token; MLflow UI login: admin / $dir/mlflow_admin_password)"
