"""Stand-ins for `aws` and `docker`, for tests/test_runbook.py, which runs
docs/deploy.md's commands: no AWS account is reachable here. Each call is
checked before anything else: against the AWS API's own model (botocore's
service models and waiters: the operation exists, every option is one of its
input members), and against the stage's stack (the template deployed is a
stage's, every parameter is one of its parameters and a new stack gets every
parameter without a default; clusters, services, log groups, scalable targets
and tables are the stack's). Then it answers what the runbook reads (outputs,
the key, version ids) from a state file, and does what DynamoDB Local can do
for real: a point-in-time restore copies the source table.

    python -m tests.runbook_aws aws <service> <command> [--option value ...]
    python -m tests.runbook_aws docker login|build|push ...

Calls are appended to the state file (RUNBOOK_STATE) for the test to read."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import jmespath
import yaml
from botocore import xform_name

from common.dynamodb import ALL_TABLES
from devcluster.dynamodb_local import LOCAL_CREDENTIALS

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCOUNT = "123456789012"
# What the AWS CLI takes on every command.
GLOBAL_OPTIONS = {"query", "output", "region", "profile", "no-cli-pager", "debug"}
# The CLI's own commands (customizations): no API operation of that name, so their options are listed here.
CUSTOMIZATIONS = {
    ("cloudformation", "deploy"): {
        "stack-name",
        "template-file",
        "s3-bucket",
        "capabilities",
        "parameter-overrides",
        "no-fail-on-empty-changeset",
        "tags",
    },
    ("ecr", "get-login-password"): set(),
    ("logs", "tail"): {"log-group-name", "since", "follow", "format", "filter-pattern"},
}


class RunbookError(Exception):
    pass


def load_state() -> dict[str, Any]:
    path = Path(os.environ["RUNBOOK_STATE"])
    loaded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return loaded


def save_state(state: dict[str, Any]) -> None:
    Path(os.environ["RUNBOOK_STATE"]).write_text(json.dumps(state, indent=1))


def parse_options(arguments: list[str]) -> dict[str, list[str]]:
    """`--name v1 v2 --flag` -> {"name": ["v1", "v2"], "flag": []}."""
    options: dict[str, list[str]] = {}
    current: str | None = None
    for argument in arguments:
        if argument.startswith("--"):
            current = argument[2:]
            if current in options:
                raise RunbookError(f"--{current} given twice")
            options[current] = []
        elif current is None:
            raise RunbookError(f"{argument!r}: a value before any option")
        else:
            options[current].append(argument)
    return options


def check_against_api_model(service: str, command: str, options: dict[str, list[str]]) -> None:
    """The command is an operation (or a waiter) of the service's API model, and each option one of
    its input members, as the CLI names them (kebab case)."""
    session = botocore.session.get_session()
    if (service, command) in CUSTOMIZATIONS:
        unknown = set(options) - CUSTOMIZATIONS[(service, command)] - GLOBAL_OPTIONS
        if unknown:
            raise RunbookError(f"aws {service} {command}: no option {sorted(unknown)}")
        return
    model = session.get_service_model(service)
    if command == "wait":
        raise RunbookError("aws ... wait needs a waiter name")
    operations = {xform_name(name, "-"): name for name in model.operation_names}
    if command not in operations:
        raise RunbookError(f"aws {service} {command}: no such operation")
    members = {xform_name(name, "-") for name in model.operation_model(operations[command]).input_shape.members}
    booleans = {f"no-{m}" for m in members}
    unknown = set(options) - members - booleans - GLOBAL_OPTIONS
    if unknown:
        raise RunbookError(f"aws {service} {command}: {operations[command]} has no member {sorted(unknown)}")


def check_waiter(service: str, waiter: str, options: dict[str, list[str]]) -> None:
    session = botocore.session.get_session()
    model = session.get_waiter_model(service)
    names = {xform_name(name, "-"): name for name in model.waiter_names}
    if waiter not in names:
        raise RunbookError(f"aws {service} wait {waiter}: no such waiter")
    operation = model.get_waiter(names[waiter]).operation
    check_against_api_model(service, xform_name(operation, "-"), options)


def stage_stack(template_file: str) -> dict[str, Any]:
    path = (Path.cwd() / template_file).resolve()
    if path.parent != REPO_ROOT / "deploy" / "stacks":
        raise RunbookError(f"{template_file}: not a stage's stack (deploy/stacks/)")
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def deploy(state: dict[str, Any], options: dict[str, list[str]]) -> None:
    (stack_name,) = options["stack-name"]
    (template_file,) = options["template-file"]
    template = stage_stack(template_file)
    if options.get("capabilities") != ["CAPABILITY_IAM"]:
        raise RunbookError("the stack makes IAM roles and policies: --capabilities CAPABILITY_IAM")
    if not options.get("s3-bucket"):
        raise RunbookError("the template is over 51,200 bytes: CloudFormation takes it from S3 (--s3-bucket)")
    given = dict(pair.split("=", 1) for pair in options.get("parameter-overrides", []))
    unknown = set(given) - set(template["Parameters"])
    if unknown:
        raise RunbookError(f"no parameter {sorted(unknown)} in {template_file}")
    stacks = state.setdefault("stacks", {})
    if stack_name not in stacks:
        required = {k for k, v in template["Parameters"].items() if "Default" not in v}
        if required - set(given):
            raise RunbookError(f"a new stack needs {sorted(required - set(given))}")
        values = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
        stacks[stack_name] = {"template": template_file, "parameters": values, "deployments": []}
    stack = stacks[stack_name]
    if stack["template"] != template_file:
        raise RunbookError(f"{stack_name} was deployed from {stack['template']}, not {template_file}")
    stack["parameters"].update(given)  # parameters not given keep their values
    stack["deployments"].append(given)


def stack_outputs(stack_name: str, state: dict[str, Any]) -> list[dict[str, str]]:
    stack = state["stacks"][stack_name]
    template = stage_stack(stack["template"])
    values = {
        "AuthJwtSecretArn": f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:"
        f"{stack['parameters']['TablePrefix']}auth-jwt-secret-AbCdEf",
        "LoadBalancerDnsName": f"internal-{stack_name}-1234567890.eu-west-1.elb.amazonaws.com",
        "TablePrefix": stack["parameters"]["TablePrefix"],
    }
    return [{"OutputKey": key, "OutputValue": values.get(key, f"{key}-value")} for key in template["Outputs"]]


def the_stack(state: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in state.get("stacks", {}):
        raise RunbookError(f"{name}: no such stack (deployed: {sorted(state.get('stacks', {}))})")
    stack: dict[str, Any] = state["stacks"][name]
    return stack


def ecs_service_names(state: dict[str, Any], cluster: str) -> set[str]:
    # The stack names its cluster after itself.
    template = stage_stack(the_stack(state, cluster)["template"])
    return {v["Properties"]["ServiceName"] for v in template["Resources"].values() if v["Type"] == "AWS::ECS::Service"}


def secret(state: dict[str, Any]) -> dict[str, Any]:
    stored: dict[str, Any] = state.setdefault(
        "secret",
        {"versions": {"v-1": os.environ["RUNBOOK_SECRET"]}, "stages": {"AWSCURRENT": "v-1"}, "next": 2},
    )
    return stored


def table_client() -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=os.environ["REWARDS_DYNAMODB_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def restore_table(source: str, target: str) -> None:
    """What DynamoDB does, on DynamoDB Local: a new table with the source's keys, indexes and items."""
    client = table_client()
    described = client.describe_table(TableName=source)["Table"]
    if not any(described["TableName"] == f"{source.removesuffix(t.name)}{t.name}" for t in ALL_TABLES):
        raise RunbookError(f"{source}: not a table of the stack")
    params: dict[str, Any] = {
        "TableName": target,
        "KeySchema": described["KeySchema"],
        "AttributeDefinitions": described["AttributeDefinitions"],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if described.get("GlobalSecondaryIndexes"):
        params["GlobalSecondaryIndexes"] = [
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
            for index in described["GlobalSecondaryIndexes"]
        ]
    client.create_table(**params)  # a restored table has the source's keys and indexes, and no stream
    client.get_waiter("table_exists").wait(TableName=target)
    for page in client.get_paginator("scan").paginate(TableName=source, ConsistentRead=True):
        for item in page["Items"]:
            client.put_item(TableName=target, Item=item)


def answer(service: str, command: str, options: dict[str, list[str]], state: dict[str, Any]) -> Any:
    """What the call returns (before --query), after checking its values against the deployed stacks."""
    if (service, command) == ("sts", "get-caller-identity"):
        return {"Account": ACCOUNT, "Arn": f"arn:aws:iam::{ACCOUNT}:user/operator", "UserId": "AIDAEXAMPLE"}
    if (service, command) == ("ecr", "get-login-password"):
        return "ecr-password"
    if (service, command) == ("cloudformation", "deploy"):
        deploy(state, options)
        return None
    if (service, command) == ("cloudformation", "describe-stacks"):
        (name,) = options["stack-name"]
        the_stack(state, name)
        return {"Stacks": [{"StackName": name, "Outputs": stack_outputs(name, state)}]}
    if service == "secretsmanager":
        stored = secret(state)
        (secret_id,) = options.get("secret-id", [""])
        if command != "get-random-password" and not secret_id.startswith("arn:aws:secretsmanager:"):
            raise RunbookError(f"--secret-id {secret_id!r}: not the AuthJwtSecretArn output")
        if command == "get-secret-value":
            version = stored["stages"]["AWSCURRENT"]
            return {"SecretString": stored["versions"][version], "VersionId": version}
        if command == "get-random-password":
            return {"RandomPassword": "N" * int(options["password-length"][0])}
        if command == "put-secret-value":
            version = f"v-{stored['next']}"
            stored["next"] += 1
            stored["versions"][version] = options["secret-string"][0]
            for stage in options["version-stages"]:
                stored["stages"][stage] = version
            return {"VersionId": version}
        if command == "update-secret-version-stage":
            (stage,) = options["version-stage"]
            (removed,) = options["remove-from-version-id"]
            if stored["stages"].get(stage) != removed:
                raise RunbookError(f"{stage} is not on {removed}")
            moved_to = options.get("move-to-version-id", [None])[0]
            if moved_to is None:
                del stored["stages"][stage]
            else:
                stored["stages"][stage] = moved_to
                stored["stages"]["AWSPREVIOUS"] = removed
            return None
    if service == "ecs":
        (cluster,) = options["cluster"]
        services = set(options.get("services", []) + options.get("service-name", []))
        unknown = services - ecs_service_names(state, cluster)
        if unknown:
            raise RunbookError(f"no ECS service {sorted(unknown)} in {cluster}")
        return {"services": [], "taskArns": []}
    if (service, command) == ("application-autoscaling", "register-scalable-target"):
        (resource_id,) = options["resource-id"]
        kind, cluster, name = resource_id.split("/")
        if kind != "service" or name not in ecs_service_names(state, cluster):
            raise RunbookError(f"{resource_id}: not a service of a stack")
        return None
    if (service, command) == ("dynamodb", "describe-table"):
        (name,) = options["table-name"]
        described = table_client().describe_table(TableName=name)["Table"]
        return {"Table": {"TableName": name, "TableStatus": described["TableStatus"]}}
    if (service, command) == ("dynamodb", "restore-table-to-point-in-time"):
        (source,) = options["source-table-name"]
        (target,) = options["target-table-name"]
        restore_table(source, target)
        state.setdefault("restored", []).append([source, target])
        return {"TableDescription": {"TableName": target}}
    raise RunbookError(f"aws {service} {command}: the runbook test does not know this call")


def render(result: Any, options: dict[str, list[str]]) -> str:
    if "query" in options:
        result = jmespath.search(options["query"][0], result)
    if result is None:
        return ""
    if isinstance(result, str):
        return result + "\n"
    if options.get("output", ["json"])[0] == "text":
        values = result if isinstance(result, list) else [result]
        return "\t".join(str(value) for value in values) + "\n"
    return json.dumps(result, indent=2) + "\n"


def run_aws(arguments: list[str]) -> int:
    service, command, *rest = arguments
    state = load_state()
    if command == "wait":
        waiter, *rest = rest
        options = parse_options(rest)
        check_waiter(service, waiter, options)
        calls = state.setdefault("calls", [])
        calls.append(["aws", service, "wait", waiter, options])
        save_state(state)
        return 0
    if (service, command) == ("logs", "tail"):
        group, *rest = rest
        options = parse_options(rest)
        check_against_api_model(service, command, options)
        if group not in log_groups(state):
            raise RunbookError(f"{group}: not a log group of a stack ({sorted(log_groups(state))})")
        state.setdefault("calls", []).append(["aws", service, command, {"log-group-name": [group], **options}])
        save_state(state)
        return 0
    options = parse_options(rest)
    check_against_api_model(service, command, options)
    result = answer(service, command, options, state)
    state.setdefault("calls", []).append(["aws", service, command, options])
    save_state(state)
    sys.stdout.write(render(result, options))
    return 0


def log_groups(state: dict[str, Any]) -> set[str]:
    groups = set()
    for name, stack in state.get("stacks", {}).items():
        template = stage_stack(stack["template"])
        for resource in template["Resources"].values():
            if resource["Type"] == "AWS::Logs::LogGroup":
                groups.add(resource["Properties"]["LogGroupName"]["Fn::Sub"].replace("${AWS::StackName}", name))
    return groups


def run_docker(arguments: list[str]) -> int:
    state = load_state()
    images = state.setdefault("images", {"built": [], "pushed": []})
    command, *rest = arguments
    if command == "login":
        if rest[:3] != ["--username", "AWS", "--password-stdin"] or sys.stdin.read() != "ecr-password\n":
            raise RunbookError("docker login: the password is ECR's, on stdin, for the user AWS")
    elif command == "build":
        tag_option, image, context = rest
        if tag_option != "-t" or not (Path(context) / "Dockerfile").exists():
            raise RunbookError(f"docker build {rest}: -t IMAGE and the repository as the context")
        images["built"].append(image)
    elif command == "push":
        (image,) = rest
        if image not in images["built"]:
            raise RunbookError(f"docker push {image}: not built")
        images["pushed"].append(image)
    else:
        raise RunbookError(f"docker {command}: the runbook test does not know this command")
    save_state(state)
    return 0


def main(argv: list[str]) -> int:
    tool, *arguments = argv
    try:
        return run_aws(arguments) if tool == "aws" else run_docker(arguments)
    except (RunbookError, KeyError, ValueError) as error:
        print(f"runbook stand-in for {tool}: {error!r}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
