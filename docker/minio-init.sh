#!/bin/sh
# One-shot set-up of the compose stack's MinIO (service minio-init; idempotent, so it runs
# on every `docker compose up`): the buckets of BUCKETS, and a least-privilege account
# (readwrite policy) for the pipeline's DVC remote and the MLflow server, so the root
# credentials never leave the minio and minio-init containers.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${LYMPHAUG_S3_ACCESS_KEY:?}" "${LYMPHAUG_S3_SECRET_KEY:?}"
export MC_CONFIG_DIR=/tmp/.mc

mc alias set stack http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
for bucket in ${BUCKETS:-lymphaug-dvc lymphaug-mlflow}; do
    mc mb --ignore-existing "stack/$bucket"
done
mc admin user add stack "$LYMPHAUG_S3_ACCESS_KEY" "$LYMPHAUG_S3_SECRET_KEY" >/dev/null
if mc admin user info stack "$LYMPHAUG_S3_ACCESS_KEY" | grep -q "readwrite"; then
    echo "account $LYMPHAUG_S3_ACCESS_KEY already has the readwrite policy"
else
    mc admin policy attach stack readwrite --user "$LYMPHAUG_S3_ACCESS_KEY"
fi
echo "minio-init: buckets and account ready"
