#!/usr/bin/env bash
# Deploy (or update) every datamaster stack of one environment, in dependency order.
#   infra/deploy.sh dev [image-tag]
# Needs: AWS CLI v2 with credentials for the target account, docker, python3, and the PII key
# secret named by PiiKeySecretName in infra/params/<env>.json (see docs/aws.md).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVIRONMENT=${1:?usage: infra/deploy.sh dev|prod [image-tag]}
TAG=${2:-$(git rev-parse --short HEAD)}
PARAMS_FILE=infra/params/$ENVIRONMENT.json
test -f "$PARAMS_FILE" || { echo "no parameter file $PARAMS_FILE" >&2; exit 2; }

param() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["Parameters"][sys.argv[2]])' "$PARAMS_FILE" "$1"; }
# One Key=Value per array element, so values with spaces ("16 vCPU") survive. A read loop, not
# mapfile/readarray: macOS's /bin/bash is 3.2, which has neither.
OVERRIDES=()
while IFS= read -r line; do OVERRIDES+=("$line"); done < <(python3 -c 'import json,sys
for k, v in json.load(open(sys.argv[1]))["Parameters"].items(): print(f"{k}={v}")' "$PARAMS_FILE")

PREFIX=$(param NamePrefix)
REGION=${AWS_REGION:-$(aws configure get region)}
export AWS_REGION=$REGION

aws secretsmanager describe-secret --secret-id "$(param PiiKeySecretName)" >/dev/null \
  || { echo "create the PII key secret $(param PiiKeySecretName) first (docs/aws.md)" >&2; exit 2; }

deploy() {  # deploy <stack> [Key=Value ...]; `deploy` ignores overrides a template does not declare
  local stack=$1; shift
  aws cloudformation deploy --stack-name "$PREFIX-$stack" --template-file "infra/$stack.yaml" \
    --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset \
    --parameter-overrides "${OVERRIDES[@]}" "$@"
}
output() {  # output <stack> <OutputKey>
  aws cloudformation describe-stacks --stack-name "$PREFIX-$1" \
    --query "Stacks[0].Outputs[?OutputKey=='$2'].OutputValue" --output text
}

deploy storage
deploy ledger
deploy catalog

REPO=$(output storage WorkerRepositoryUri)
aws ecr get-login-password | docker login --username AWS --password-stdin "${REPO%%/*}"
# Lambda takes only a single-platform image manifest: no OCI index, so no BuildKit provenance/SBOM
# attestations (Docker Desktop and buildx add them by default), and the platform the functions and
# the task declare (compute.yaml: Architectures x86_64, RuntimePlatform X86_64) even on an arm64 host.
docker buildx build --platform linux/amd64 --provenance=false --sbom=false --load \
  -f infra/Dockerfile -t "$REPO:$TAG" .
docker push "$REPO:$TAG"
# Deploy by digest: with a re-pushed tag (same commit, dirty tree) the template would not change,
# so the Lambda functions (pinned to a digest at deploy time) would keep the old image while ECS
# (tag resolved at each RunTask) runs the new one.
DIGEST=$(aws ecr describe-images --repository-name "${REPO#*/}" --image-ids imageTag="$TAG" \
  --query "imageDetails[0].imageDigest" --output text)

deploy compute "WorkerImageUri=$REPO@$DIGEST"
# Second pass: now that the registration Lambda (and its invoke permission) exists.
deploy storage "RegistrationFunctionArn=$(output compute RegistrationFunctionArn)"
deploy firehose

cat <<ENV
# Environment for the Dagster deployment of $PREFIX:
export DATAMASTER_ENV=aws AWS_REGION=$REGION
export DATAMASTER_RAW_BUCKET=$(output storage RawBucketName)
export DATAMASTER_LAKE_BUCKET=$(output storage LakeBucketName)
export DATAMASTER_LEDGER_TABLE=$(output ledger LedgerTableName)
export DATAMASTER_ATHENA_WORKGROUP=$(output catalog AthenaWorkGroupName)
export DATAMASTER_GLUE_DATABASES=$(output catalog GlueDatabases)
export DATAMASTER_LAMBDA_FUNCTION=$(output compute BronzeFunctionName)
export DATAMASTER_LAMBDA_MAX_RECORDS=$(output compute BronzeLambdaMaxRecords)
export DATAMASTER_ECS_CLUSTER=$(output compute ClusterName)
export DATAMASTER_ECS_TASK_DEFINITION=$(output compute BronzeTaskDefinitionFamily)
export DATAMASTER_EMR_APPLICATION_ID=$(output compute SparkApplicationId)
export DATAMASTER_EMR_EXECUTION_ROLE_ARN=$(output compute EmrJobRoleArn)
export DATAMASTER_EMR_LOG_GROUP=$(output compute EmrLogGroupName)
# plus DATAMASTER_PII_KEY (the secret's value) and DATAMASTER_ECS_SUBNETS: private subnets with a NAT
# gateway or VPC endpoints (ecr.api, ecr.dkr, s3, logs, secretsmanager, dynamodb), or public subnets
# with DATAMASTER_ECS_ASSIGN_PUBLIC_IP=true; otherwise the Fargate task cannot even pull its image.
ENV
