#!/bin/sh
# What /lambda-entrypoint.sh does in the AWS Lambda base images: the handler is the only argument; without
# AWS_LAMBDA_RUNTIME_API (a local `docker run`) the Runtime Interface Emulator fronts the runtime, with it
# (on AWS) the runtime talks to the real Runtime API.
if [ $# -ne 1 ]; then
  echo "lambda-entrypoint: expected exactly one argument, the handler (module.function)" >&2
  exit 142
fi
export _HANDLER="$1"
if [ -z "${AWS_LAMBDA_RUNTIME_API:-}" ]; then
  exec /usr/local/bin/aws-lambda-rie /var/lang/bin/python3 -m awslambdaric "$_HANDLER"
fi
exec /var/lang/bin/python3 -m awslambdaric "$_HANDLER"
