#!/usr/bin/env bash
# Build, push and deploy the function to real AWS.
#   scripts/deploy.sh rds-ca   fetch AWS's RDS CA bundle into lambda/certs/ (make rds-ca; image does it if missing)
#   scripts/deploy.sh image    build the Lambda image from lambda/Dockerfile (make image)
#   scripts/deploy.sh push     log in to ECR, tag and push the image; print its digest (make push)
#   scripts/deploy.sh deploy   push, then deploy deploy/template.yaml with that digest (make deploy)
# Account and region come from the AWS CLI configuration (AWS_PROFILE, AWS_REGION work as usual).
# Settings: STACK_NAME (ingest), ECR_REPOSITORY (ingest-lambda), DATABASE_SECRET_ARN (deploy only),
#           TRIGGER (sqs|s3), DATABASE_SSLMODE (require|verify-full), IMAGE_TAG (the git commit).
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-}
STACK_NAME=${STACK_NAME:-ingest}
ECR_REPOSITORY=${ECR_REPOSITORY:-ingest-lambda}
IMAGE_TAG=${IMAGE_TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}
LOCAL_IMAGE=ingest-lambda:$IMAGE_TAG
AWS=${AWS_CLI:-aws}
[ -x .venv/bin/aws ] && [ -z "${AWS_CLI:-}" ] && AWS=.venv/bin/aws

die() { echo "error: $*" >&2; exit 1; }

need_docker() {
  command -v docker >/dev/null || die "docker is not installed: the image needs Docker (the embedded stack does not: make up)"
  docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed): start Docker, then run this again"
}

need_aws() {
  [ -n "${AWS_ENDPOINT_URL:-}" ] && die "AWS_ENDPOINT_URL is set ($AWS_ENDPOINT_URL): this deploys to real AWS; unset it first"
  ACCOUNT=$($AWS sts get-caller-identity --query Account --output text 2>/dev/null) \
    || die "no AWS credentials: configure them (aws configure, or AWS_PROFILE) and run this again"
  REGION=${AWS_REGION:-${AWS_DEFAULT_REGION:-$($AWS configure get region 2>/dev/null || true)}}
  [ -n "$REGION" ] || die "no AWS region: set AWS_REGION or run aws configure"
  REGISTRY=$ACCOUNT.dkr.ecr.$REGION.amazonaws.com
  REMOTE_IMAGE=$REGISTRY/$ECR_REPOSITORY:$IMAGE_TAG
}

RDS_CA_URL=https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem
RDS_CA=lambda/certs/rds-global-bundle.pem

rds_ca() {
  echo "fetching the RDS CA bundle from $RDS_CA_URL into $RDS_CA"
  curl -fsS --proto =https --tlsv1.2 -o "$RDS_CA.new" "$RDS_CA_URL" || { rm -f "$RDS_CA.new"; return 1; }
  grep -q "BEGIN CERTIFICATE" "$RDS_CA.new" || { rm -f "$RDS_CA.new"; die "$RDS_CA_URL did not answer with certificates"; }
  mv "$RDS_CA.new" "$RDS_CA"
  echo "$(grep -c 'BEGIN CERTIFICATE' "$RDS_CA") certificates in $RDS_CA"
}

image() {
  need_docker
  [ -f "$RDS_CA" ] || rds_ca || echo "warning: no RDS CA bundle in the image: DatabaseSslMode=verify-full will fail (make rds-ca)" >&2
  echo "building $LOCAL_IMAGE from lambda/Dockerfile"
  docker build --platform linux/amd64 -t "$LOCAL_IMAGE" lambda
}

push() {
  need_aws
  need_docker
  echo "will push $LOCAL_IMAGE to $REMOTE_IMAGE (account $ACCOUNT, region $REGION)"
  image
  $AWS ecr describe-repositories --repository-names "$ECR_REPOSITORY" --region "$REGION" >/dev/null 2>&1 \
    || $AWS ecr create-repository --repository-name "$ECR_REPOSITORY" --region "$REGION" \
         --image-scanning-configuration scanOnPush=true >/dev/null
  $AWS ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "$REGISTRY"
  docker tag "$LOCAL_IMAGE" "$REMOTE_IMAGE"
  docker push "$REMOTE_IMAGE"
  DIGEST=$($AWS ecr describe-images --repository-name "$ECR_REPOSITORY" --image-ids imageTag="$IMAGE_TAG" \
    --region "$REGION" --query 'imageDetails[0].imageDigest' --output text)
  IMAGE_URI=$REGISTRY/$ECR_REPOSITORY@$DIGEST
  echo "pushed $IMAGE_URI"
}

deploy() {
  need_aws
  [ -n "${DATABASE_SECRET_ARN:-}" ] || die "DATABASE_SECRET_ARN is not set: the function reads its database URL from that secret"
  echo "will deploy stack $STACK_NAME (trigger ${TRIGGER:-sqs}) in $REGION of account $ACCOUNT"
  push
  $AWS cloudformation deploy --region "$REGION" --stack-name "$STACK_NAME" \
    --template-file deploy/template.yaml --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
    --parameter-overrides ImageUri="$IMAGE_URI" DatabaseSecretArn="$DATABASE_SECRET_ARN" Trigger="${TRIGGER:-sqs}" \
      NotifyEmail="${NOTIFY_EMAIL:-}" DatabaseSslMode="${DATABASE_SSLMODE:-require}"
  $AWS cloudformation describe-stacks --region "$REGION" --stack-name "$STACK_NAME" \
    --query 'Stacks[0].Outputs' --output table
}

case "$action" in
  rds-ca) rds_ca ;;
  image) image ;;
  push) push ;;
  deploy) deploy ;;
  *) echo "usage: scripts/deploy.sh rds-ca|image|push|deploy" >&2; exit 2 ;;
esac
