#!/bin/bash
# LocalStack ready.d hook: apply the pipeline's one resource definition (localstack/resources.json)
# with the same script the embedded stack uses. compose.yaml mounts localstack/ at /opt/ingest-bootstrap.
set -euo pipefail
python=/opt/code/localstack/.venv/bin/python
[ -x "$python" ] || python=python3
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_DEFAULT_REGION=us-east-1 \
  "$python" /opt/ingest-bootstrap/bootstrap.py --endpoint-url http://localhost:4566
