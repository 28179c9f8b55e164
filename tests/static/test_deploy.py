"""deploy/: the template is valid CloudFormation (cfn-lint), sets what the function reads, and grants
nothing wider than it needs; the deploy script stops clearly without Docker or credentials."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "template.yaml"
#: Read by the function but deliberately not set by the template: alternatives, defaults, emulators.
OPTIONAL = {
    "DATABASE_URL",
    "INGEST_OUTPUT_BUCKET",
    "INGEST_CONTRACTS_DIR",
    "AWS_ENDPOINT_URL",
    "INGEST_DEADLINE_MARGIN_MS",
    "ARROW_DEFAULT_MEMORY_POOL",  # pyarrow's own: names a pool other than the jemalloc the function takes
}


class CfnLoader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    if isinstance(node, yaml.ScalarNode):
        value: object = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


CfnLoader.add_multi_constructor("!", _tag)


def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def test_cfn_lint_passes():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_variable_the_function_reads_is_set_by_the_template():
    read = set()
    for path in (REPO / "lambda" / "ingest").rglob("*.py"):
        if path.name == "cli.py":
            continue  # the command line runs on people's machines, not in Lambda
        read |= set(re.findall(r"os\.environ(?:\.get)?[\[(]\"([A-Z_]+)\"", path.read_text()))
    variables = template()["Resources"]["Function"]["Properties"]["Environment"]["Variables"]
    assert {"DATABASE_SECRET_ARN", "INGEST_TOPIC_ARN"} <= read
    assert read - OPTIONAL - {"POWERTOOLS_SERVICE_NAME"} <= set(variables), read - set(variables)
    assert "DATABASE_URL" not in variables  # the connection comes from Secrets Manager only


def test_the_policy_names_no_wildcard_resource_or_action():
    role = template()["Resources"]["FunctionRole"]["Properties"]
    statements = [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]
    assert {s["Sid"] for s in statements} == {
        "ReadUploads",
        "WriteOutputs",
        "PublishReceipts",
        "ReadDatabaseSecret",
        "ConsumeUploads",
        "WriteLogs",
        "DeadLetterDirectInvocations",
    }
    for statement in statements:
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for resource in resources:
            text = str(resource)
            assert text != "*" and not text.endswith(":*'}") and "s3:::*" not in text, statement["Sid"]
            if "*" in text:  # only object keys under one prefix of the one bucket
                assert re.search(r"/(incoming|processed|errors)/\*", text), statement["Sid"]
        assert all("*" not in action for action in actions), statement["Sid"]


def test_the_queue_trigger_reports_batch_item_failures_and_the_dlq_has_an_alarm():
    resources = template()["Resources"]
    assert resources["QueueTrigger"]["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert resources["DeadLetterAlarm"]["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert resources["LogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    command = resources["Function"]["Properties"]["ImageConfig"]["Command"]
    dockerfile = (REPO / "lambda" / "Dockerfile").read_text()
    assert f'CMD ["{command[0]}"]' in dockerfile


@pytest.mark.parametrize("action", ["image", "push", "deploy"])
def test_the_deploy_script_stops_clearly_without_docker_or_credentials(action, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
        DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock",
    )
    result = subprocess.run(
        [str(REPO / "scripts" / "deploy.sh"), action], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode == 1
    assert "no AWS credentials" in result.stderr or "Docker" in result.stderr, result.stderr


def test_an_optional_email_gets_failures_rejections_and_the_dead_letter_alarm():
    t = template()
    assert t["Parameters"]["NotifyEmail"]["Default"] == ""
    subscription = t["Resources"]["FailureEmailSubscription"]
    assert subscription["Condition"] == "NotifyByEmail"
    assert t["Conditions"]["NotifyByEmail"] == {"Not": [{"Equals": [{"Ref": "NotifyEmail"}, ""]}]}
    props = subscription["Properties"]
    assert props["Protocol"] == "email" and props["TopicArn"] == {"Ref": "ReceiptsTopic"}
    assert props["FilterPolicy"] == {"status": ["failed", "rejected", {"exists": False}]}
    assert t["Resources"]["DeadLetterAlarm"]["Properties"]["AlarmActions"] == [{"Ref": "ReceiptsTopic"}]
    from ingest.receipt import Receipt

    # the attribute the filter reads is the one receipts carry
    assert Receipt(status="failed", bucket="b", key="k").attributes["status"]["StringValue"] == "failed"


def test_the_bucket_drops_the_parts_of_outputs_left_unfinished():
    """An abort past the function's deadline is waited for only briefly; the lifecycle rule is the backstop."""
    rules = template()["Resources"]["Bucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any(
        r["Status"] == "Enabled" and r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1 for r in rules
    )


def test_the_queue_trigger_caps_concurrent_loads_and_reserved_concurrency_never_throttles_it():
    """Lambda throttles batches beyond reserved concurrency; a throttled batch returns to the queue with its
    receive count raised, so a reserved concurrency below the trigger's maximum would dead-letter valid files."""
    t = template()
    definition = json.loads((REPO / "localstack" / "resources.json").read_text())["event_source"]
    parameter = t["Parameters"]["MaximumConcurrency"]
    assert parameter["MinValue"] >= 2 and parameter["MaxValue"] <= 1000  # what AWS accepts
    assert parameter["Default"] == definition["maximum_concurrency"]  # the dev stacks run as many instances
    trigger = t["Resources"]["QueueTrigger"]["Properties"]
    assert trigger["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "MaximumConcurrency"}}
    assert trigger["BatchSize"] == definition["batch_size"]
    assert trigger["MaximumBatchingWindowInSeconds"] == definition["maximum_batching_window_seconds"]
    reserved = t["Resources"]["Function"]["Properties"]["ReservedConcurrentExecutions"]
    # only where no trigger caps the loads (S3 invokes the function), and then exactly the same cap
    assert reserved == {"If": ["Direct", {"Ref": "MaximumConcurrency"}, {"Ref": "AWS::NoValue"}]}
    assert t["Conditions"]["Direct"] == {"Equals": [{"Ref": "Trigger"}, "s3"]}
    assert "ReservedConcurrency" not in t["Parameters"]


def test_the_dev_stacks_wiring_and_the_template_agree_on_everything_they_share():
    """localstack/resources.json wires both dev stacks; deploy/template.yaml wires AWS: what they share is the
    same, so that what runs locally is what runs there."""
    wiring = json.loads((REPO / "localstack" / "resources.json").read_text())
    t = template()
    parameters, resources = t["Parameters"], t["Resources"]
    [rule] = resources["Bucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]["If"][1]
    assert rule["Event"] == "s3:ObjectCreated:*" and wiring["notification"]["events"] == ["s3:ObjectCreated:*"]
    assert rule["Filter"]["S3Key"]["Rules"] == [{"Name": "prefix", "Value": wiring["notification"]["prefix"]}]
    queue = resources["UploadsQueue"]["Properties"]
    assert parameters["QueueVisibilityTimeout"]["Default"] == wiring["queue"]["visibility_timeout_seconds"]
    assert queue["MessageRetentionPeriod"] == wiring["queue"]["message_retention_seconds"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == {"Ref": "MaxReceiveCount"}
    assert parameters["MaxReceiveCount"]["Default"] == wiring["dead_letter_queue"]["max_receive_count"]
    dlq = resources["DeadLetterQueue"]["Properties"]
    assert dlq["MessageRetentionPeriod"] == wiring["dead_letter_queue"]["message_retention_seconds"]
    # the visibility timeout outlasts the function, six times over as AWS recommends (a delivery still running
    # when its message came back would be taken for one that died)
    assert parameters["Timeout"]["Default"] == wiring["function"]["timeout_seconds"]
    assert wiring["queue"]["visibility_timeout_seconds"] >= 6 * wiring["function"]["timeout_seconds"]
    assert parameters["MemorySize"]["Default"] == wiring["function"]["memory_mb"]
    trigger = resources["QueueTrigger"]["Properties"]
    event_source = wiring["event_source"]
    assert (trigger["BatchSize"], trigger["MaximumBatchingWindowInSeconds"]) == (
        event_source["batch_size"],
        event_source["maximum_batching_window_seconds"],
    )
    assert parameters["MaximumConcurrency"]["Default"] == event_source["maximum_concurrency"]
    assert resources["Function"]["Properties"]["ImageConfig"]["Command"] == [wiring["function"]["handler"]]
    # receipts: one topic, which the dev stacks' tap and the template's e-mail subscribe to
    assert resources["ReceiptsTopic"]["Type"] == "AWS::SNS::Topic" and wiring["topic"] == "ingest-receipts"
    assert resources["FailureEmailSubscription"]["Properties"]["TopicArn"] == {"Ref": "ReceiptsTopic"}


def test_the_function_is_watched_by_alarms_to_the_receipts_topic_and_a_dashboard_of_its_metrics():
    t = template()
    resources = t["Resources"]
    alarms = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    watched = {(a["Namespace"], a["MetricName"]) for a in alarms.values()}
    assert watched >= {
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
        ("AWS/Lambda", "Duration"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
    }
    assert all(a["AlarmActions"] == [{"Ref": "ReceiptsTopic"}] for a in alarms.values())
    assert t["Parameters"]["DurationAlarmMilliseconds"]["Default"] < t["Parameters"]["Timeout"]["Default"] * 1000
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Sub"][0]
    from ingest.metrics import NAMESPACE

    for metric in ("Files", "RowsLoaded", "RowsRejected", "Lag"):
        assert f'["{NAMESPACE}", "{metric}"' in body, metric
    variables = resources["Function"]["Properties"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == NAMESPACE


def test_the_function_joins_the_databases_vpc_only_when_given_subnets_with_endpoints_for_a_vpc_without_nat():
    t = template()
    resources, conditions = t["Resources"], t["Conditions"]
    assert t["Parameters"]["SubnetIds"]["Default"] == "" and t["Parameters"]["SecurityGroupIds"]["Default"] == ""
    assert conditions["InVpc"] == {"Not": [{"Equals": [{"Join": ["", {"Ref": "SubnetIds"}]}, ""]}]}
    function = resources["Function"]["Properties"]
    assert function["VpcConfig"]["If"][0] == "InVpc" and function["VpcConfig"]["If"][2] == {"Ref": "AWS::NoValue"}
    role = resources["FunctionRole"]["Properties"]
    assert role["ManagedPolicyArns"]["If"][0] == "InVpc"  # the ENI permissions, only in a VPC
    assert "AWSLambdaVPCAccessExecutionRole" in str(role["ManagedPolicyArns"]["If"][1])
    endpoints = {n: r for n, r in resources.items() if r["Type"] == "AWS::EC2::VPCEndpoint"}
    services = {str(r["Properties"]["ServiceName"]).rsplit(".", 1)[-1].strip("'}") for r in endpoints.values()}
    assert services == {"s3", "secretsmanager", "sns"} and all(
        r["Condition"] == "VpcEndpoints" for r in endpoints.values()
    )
    # the bucket keeps what is overwritten or deleted, for a while; a direct invocation that fails lands in the DLQ
    bucket = resources["Bucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert any("NoncurrentVersionExpiration" in r for r in bucket["LifecycleConfiguration"]["Rules"])
    assert function["DeadLetterConfig"] == {"TargetArn": {"GetAtt": "DeadLetterQueue.Arn"}}
