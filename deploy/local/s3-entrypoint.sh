#!/bin/sh
# SeaweedFS as one S3 server on port 9000: its identities from the environment, its data in /data.
set -eu
config=/tmp/s3.json
umask 077
python3 - "$config" <<'PY'
import json, os, sys
actions = ["Admin", "Read", "Write", "List", "Tagging"]
users = [(os.environ["MINIO_ROOT_USER"], os.environ["MINIO_ROOT_PASSWORD"]),
         (os.environ["STORE_ACCESS_KEY"], os.environ["STORE_SECRET_KEY"])]
identities = [{"name": f"user{k}", "credentials": [{"accessKey": a, "secretKey": s}], "actions": actions}
              for k, (a, s) in enumerate(users)]
with open(sys.argv[1], "w") as f:
    json.dump({"identities": identities}, f)
PY
mkdir -p /data/weed /tmp/weed
exec weed -logdir=/tmp/weed server -dir=/data/weed -ip=127.0.0.1 -ip.bind=0.0.0.0 \
    -filer -s3 -s3.port=9000 -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false \
    -s3.config="$config" -master.telemetry=false -volume.max=100 -master.volumeSizeLimitMB=64 \
    -filer.localSocket=/tmp/weed/filer.sock -s3.localSocket=/tmp/weed/s3.sock
