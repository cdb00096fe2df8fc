#!/bin/sh
# Writes the basic-auth config from the environment, then serves MLflow:
#   runs/registry in PostgreSQL, artifacts proxied to S3 (MinIO), users in PostgreSQL too.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set to postgresql://USER:PASSWORD@HOST:5432/DB}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set to s3://BUCKET/PREFIX}"
: "${MLFLOW_ADMIN_PASSWORD:?set the admin password}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set a long random secret}"
cat > /tmp/basic_auth.ini <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
admin_username = ${MLFLOW_ADMIN_USERNAME:-admin}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH=/tmp/basic_auth.ini
python /prepare_db.py  # tables created once, under a lock: replicas and workers must not race
exec mlflow server \
  --app-name basic-auth \
  --host 0.0.0.0 --port 5000 \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --allowed-hosts "${MLFLOW_SERVER_ALLOWED_HOSTS:-localhost:*,127.0.0.1:*,mlflow:*,mlflow.*}" \
  --workers "${MLFLOW_WORKERS:-4}"
