"""The cluster configs in wsss/cluster/, read the way their tools read them; nothing is started.

- aws.yaml, gcp.yaml: Ray's own `ray up` validation (defaults merged, then Ray's JSON schema),
  then what wsss needs of the cluster: GPUs present at start, token auth, loopback dashboard.
- rayjob.yaml, raycluster.yaml: the field names and types of KubeRay's ray.io/v1 CRDs, then
  the same needs.
- Every `wsss` command in any file (commands, entrypoint, the usage comments) parses with the
  wsss parser and resolves with the wsss config loader.
"""

from __future__ import annotations

import copy
import shlex
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
from ray.runtime_env import RuntimeEnv

from wsss.cli import build_parser
from wsss.platform.config import ConfigError, load_config, preset_names
from wsss.tune_spaces import space_modules

REPO = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO / "wsss" / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
KUBERAY_MANIFESTS = ["rayjob.yaml", "raycluster.yaml"]
ALL_CONFIGS = [*LAUNCHER_CONFIGS, *KUBERAY_MANIFESTS, "runtime_env.yaml"]
# Every node reads the data and writes the runs folder: both must be on storage all nodes mount.
SHARED_ROOT = PurePosixPath("/mnt/shared")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}
# A RayJob's dashboard cannot be on loopback: KubeRay's operator polls the job through the head
# Service (rayjob_controller.go: FetchHeadServiceURL) and its submitter Job runs `ray job submit`
# against it; KubeRay itself defaults dashboard-host to 0.0.0.0 (common/pod.go).
RAYJOB_DASHBOARD_HOST = "0.0.0.0"
# The GPU count wsss needs when a command starts: it sizes runs by ray.cluster_resources().
PAPER = load_config("paper")

# A subset of KubeRay v1.7.0's CRDs (ray-project/kuberay, ray-operator/config/crd/bases/
# ray.io_rayjobs.yaml and ray.io_rayclusters.yaml, version v1): the property names of every
# level these manifests write, their types, and the CRD's `required` lists. Kubernetes prunes
# fields a CRD does not know without an error, so a misspelt field would vanish silently on
# `kubectl apply`; here every such level is closed. "ours" marks requirements beyond the CRD.
_ANY: dict[str, Any] = {}
_INT32 = {"type": "integer", "maximum": 2**31 - 1}
_RAY_START_PARAMS = {"type": "object", "additionalProperties": {"type": "string"}}
_CONTAINER = {"type": "object", "required": ["name", "image"]}  # image: ours
_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1, "items": _CONTAINER}},
        }
    },
}
_HEAD_GROUP_SPEC = {
    "type": "object",
    "required": ["rayStartParams", "template"],  # rayStartParams: ours
    "additionalProperties": False,
    "properties": {
        "enableIngress": {"type": "boolean"},
        "headService": _ANY,
        "ingressOptions": _ANY,
        "labels": _ANY,
        "rayStartParams": _RAY_START_PARAMS,
        "resources": _ANY,
        "serviceType": {"type": "string"},
        "template": _POD_TEMPLATE,
    },
}
_WORKER_GROUP_SPEC = {
    "type": "object",
    # replicas, rayStartParams: ours
    "required": [
        "groupName",
        "replicas",
        "minReplicas",
        "maxReplicas",
        "rayStartParams",
        "template",
    ],
    "additionalProperties": False,
    "properties": {
        "groupName": {"type": "string"},
        "idleTimeoutSeconds": _ANY,
        "labels": _ANY,
        "maxReplicas": _INT32,
        "minReplicas": _INT32,
        "numOfHosts": _INT32,
        "priority": _ANY,
        "rayStartParams": _RAY_START_PARAMS,
        "replicas": _INT32,
        "resources": _ANY,
        "scaleStrategy": _ANY,
        "suspend": {"type": "boolean"},
        "template": _POD_TEMPLATE,
    },
}
_RAY_CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec", "rayVersion", "workerGroupSpecs"],  # the last two: ours
    "additionalProperties": False,
    "properties": {
        "authOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "enableK8sTokenAuth": {"type": "boolean"},
                "mode": {"enum": ["disabled", "token"]},
                "secretName": {"type": "string"},
            },
        },
        "autoscalerOptions": _ANY,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": _ANY,
        "headGroupSpec": _HEAD_GROUP_SPEC,
        "headServiceAnnotations": _ANY,
        "historyServerOptions": _ANY,
        "managedBy": _ANY,
        "networkPolicy": _ANY,
        "rayVersion": {"type": "string"},
        "suspend": {"type": "boolean"},
        "tlsOptions": _ANY,
        "upgradeStrategy": _ANY,
        "workerGroupSpecs": {"type": "array", "minItems": 1, "items": _WORKER_GROUP_SPEC},
    },
}
_RAY_JOB_SPEC = {
    "type": "object",
    "required": ["entrypoint", "rayClusterSpec"],  # ours: a job that makes its own cluster
    "additionalProperties": False,
    "properties": {
        "activeDeadlineSeconds": _INT32,
        "backoffLimit": _INT32,
        "clusterSelector": _ANY,
        "deletionStrategy": _ANY,
        "entrypoint": {"type": "string"},
        "entrypointNumCpus": {"type": "number"},
        "entrypointNumGpus": {"type": "number"},
        "entrypointResources": {"type": "string"},
        "jobId": {"type": "string"},
        "managedBy": _ANY,
        "metadata": _ANY,
        "preRunningDeadlineSeconds": _INT32,
        "rayClusterSpec": _RAY_CLUSTER_SPEC,
        "runtimeEnvYAML": {"type": "string"},
        "shutdownAfterJobFinishes": {"type": "boolean"},
        "submissionMode": {"type": "string"},
        "submitterConfig": _ANY,
        "submitterPodTemplate": _ANY,
        "suspend": {"type": "boolean"},
        "ttlSecondsAfterFinished": _INT32,
    },
}


def _manifest_schema(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "ray.io/v1"},
            "kind": {"const": kind},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": spec,
        },
    }


KUBERAY_SCHEMAS = {
    "RayJob": _manifest_schema("RayJob", _RAY_JOB_SPEC),
    "RayCluster": _manifest_schema("RayCluster", _RAY_CLUSTER_SPEC),
}

SHELL_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "{", "}", "--"}


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name}: not a YAML mapping"
    return data


def shell_words(line: str) -> list[str]:
    """`line` split into shell words, operators as words of their own."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError:  # an unbalanced quote in a comment's prose
        return line.split()


def simple_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line, leading VAR=value words kept. `--` also ends one
    (`ray job submit ... -- wsss run`, `kubectl exec ... -- wsss tune`), and a quoted word that
    holds a command (`ray exec x.yaml "wsss run ..."`) is searched as well."""
    command: list[str] = []
    for word in [*shell_words(line), ";"]:
        if word in SHELL_SEPARATORS:
            if command:
                yield command
            command = []
            continue
        command.append(word)
        if any(c.isspace() for c in word):
            yield from simple_commands(word)


def split_assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, the argv after them)."""
    env: dict[str, str] = {}
    for index, word in enumerate(words):
        name, sep, value = word.partition("=")
        if not (sep and name.isidentifier()):
            return env, words[index:]
        env[name] = value
    return env, []


def yaml_strings(node: Any) -> Iterator[str]:
    """The string values of a parsed YAML document that could be commands: one word is a name
    (`cluster_name: wsss`), never a command line."""
    if isinstance(node, str):
        if any(c.isspace() for c in node.strip()):
            yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from yaml_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from yaml_strings(item)


def comment_examples(text: str) -> Iterator[str]:
    """The shell examples in a file's comments: whole-line comments indented two spaces or more
    past the '#' (prose has one), a trailing backslash joining a line to the next."""
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        body = stripped.removeprefix("#")
        if body == stripped or not body.startswith("  "):
            pending = ""
            continue
        line = pending + body.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        yield line


def wsss_commands(path: Path) -> list[list[str]]:
    """Every `wsss ...` command of a file: in its string values and its comments' examples."""
    text = path.read_text()
    found = []
    for line in [*yaml_strings(yaml.safe_load(text)), *comment_examples(text)]:
        for words in simple_commands(line):
            _, argv = split_assignments(words)
            if argv and PurePosixPath(argv[0]).name == "wsss":
                found.append(argv[1:])
    return found


def under_shared_storage(path: Path | str) -> bool:
    return PurePosixPath(path).is_relative_to(SHARED_ROOT)


def wsss_command_problems(args: list[str]) -> list[str]:
    """Why `wsss <args>` would not run as meant on a cluster; [] when it would."""
    shown = shlex.join(["wsss", *args])
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit:
        return [f"{shown}: wsss's parser refuses it"]
    problems = []
    preset = getattr(parsed, "preset", None)
    if preset is not None and preset not in preset_names():
        problems.append(f"{shown}: no preset {preset!r} (presets: {preset_names()})")
    if getattr(parsed, "space", None) not in (None, *space_modules()):
        problems.append(f"{shown}: no search space {parsed.space!r}")
    if hasattr(parsed, "overrides") and not problems and parsed.config is None:
        try:
            config = load_config(preset, None, parsed.overrides)
        except ConfigError as exc:
            problems.append(f"{shown}: {exc}")
        else:
            if config.data.root is not None and not under_shared_storage(config.data.root):
                problems.append(f"{shown}: data.root is not under {SHARED_ROOT}")
    runs_dir = getattr(parsed, "runs_dir", None)
    if runs_dir is not None and not under_shared_storage(runs_dir):
        problems.append(f"{shown}: --runs-dir is not under {SHARED_ROOT}")
    return problems


def option_value(argv: list[str], option: str) -> str | None:
    """The value of `--option=value` or `--option value` in argv."""
    for index, word in enumerate(argv):
        if word.startswith(option + "="):
            return word.partition("=")[2]
        if word == option and index + 1 < len(argv):
            return argv[index + 1]
    return None


def validate_like_ray_up(config: dict[str, Any]) -> dict[str, Any]:
    """The checks `ray up` makes before it contacts the cloud; returns the merged config.

    `ray up` (commands._bootstrap_config) runs prepare_config, then the provider class's
    resource autodetection, then validate_config, then the provider's bootstrap. prepare_config
    only merges the provider's defaults.yaml, which ships with Ray, so it needs no cloud SDK;
    the autodetection and the bootstrap need boto3 / the Google API client and an account, so
    they are skipped. The node types here state their CPUs and GPUs, so autodetection could
    only add what these checks do not read (memory).
    """
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_starts(command: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Each `ray start` in a shell line: (its environment from `export`s and assignments, argv)."""
    exported: dict[str, str] = {}
    for words in simple_commands(command):
        env, argv = split_assignments(words)
        if argv[:1] == ["export"]:
            exported.update(split_assignments(argv[1:])[0])
        elif len(argv) > 1 and PurePosixPath(argv[0]).name == "ray" and argv[1] == "start":
            yield {**exported, **env}, argv


def launcher_config_problems(config: dict[str, Any]) -> list[str]:
    """What a config that passed `ray up`'s validation still gets wrong for wsss; [] if nothing."""
    problems = []
    node_types = config["available_node_types"]
    head_type = config["head_node_type"]
    gpu_types = {n: t for n, t in node_types.items() if t["resources"].get("GPU", 0) >= 1}
    if not gpu_types or head_type in gpu_types:
        problems.append(f"needs GPU worker types apart from the head; GPU types: {list(gpu_types)}")
    if node_types[head_type]["max_workers"] != 0:
        problems.append("the head node type must not launch workers of its own")
    for name, node_type in gpu_types.items():
        low, high = node_type["min_workers"], node_type["max_workers"]
        if not 0 <= low <= high <= config["max_workers"]:
            problems.append(
                f"{name}: needs 0 <= min_workers {low} <= max_workers {high} "
                f"<= global max_workers {config['max_workers']}"
            )
        if node_type["resources"].get("CPU", 0) < PAPER.ray.cpus_per_worker:
            problems.append(f"{name}: a training worker takes {PAPER.ray.cpus_per_worker} CPUs")
    gpus_at_start = sum(t["min_workers"] * t["resources"]["GPU"] for t in gpu_types.values())
    if gpus_at_start < PAPER.ray.num_workers:
        problems.append(
            f"{gpus_at_start} GPUs at start; the paper preset refuses fewer than "
            f"{PAPER.ray.num_workers}"
        )

    if config["file_mounts"].get("~/.ray/auth_token") != "~/.ray/auth_token":
        problems.append("file_mounts must put the local Ray token at ~/.ray/auth_token")
    mounts_shared = any("mount " in c and str(SHARED_ROOT) in c for c in config["setup_commands"])
    if not mounts_shared:
        problems.append(f"setup_commands must mount the shared storage at {SHARED_ROOT}")

    head_starts = [s for c in config["head_start_ray_commands"] for s in ray_starts(c)]
    worker_starts = [s for c in config["worker_start_ray_commands"] for s in ray_starts(c)]
    if len(head_starts) != 1 or "--head" not in head_starts[0][1]:
        problems.append("head_start_ray_commands must run one `ray start --head`")
    if len(worker_starts) != 1 or option_value(worker_starts[0][1], "--address") is None:
        problems.append("worker_start_ray_commands must run one `ray start --address=...`")
    for env, argv in head_starts + worker_starts:
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{shlex.join(argv)}: RAY_AUTH_MODE=token is not set before it")
    for _, argv in head_starts:
        if option_value(argv, "--dashboard-host") not in LOOPBACK_HOSTS:
            problems.append(f"{shlex.join(argv)}: the dashboard must listen on loopback only")
        if option_value(argv, "--autoscaling-config") != "~/ray_bootstrap_config.yaml":
            problems.append(f"{shlex.join(argv)}: without the bootstrap config no worker starts")
        # The autoscaler imports the cloud SDK from the Python that runs `ray start`.
        sdk = {"aws": "boto3", "gcp": "google-api-python-client"}[config["provider"]["type"]]
        pip = str(PurePosixPath(argv[0]).with_name("pip"))
        if not any(f"{pip} install" in c and sdk in c for c in config["head_setup_commands"]):
            problems.append(f"head_setup_commands must install {sdk} with {pip}")
    return problems


def kuberay_manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Why KubeRay would drop, refuse or misrun this manifest; [] when nothing."""
    kind = manifest.get("kind")
    if kind not in KUBERAY_SCHEMAS:
        return [f"kind {kind!r} is neither of {sorted(KUBERAY_SCHEMAS)}"]
    validator = jsonschema.Draft7Validator(KUBERAY_SCHEMAS[kind])
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(manifest)
    ]
    if problems:
        return problems
    spec = manifest["spec"]
    cluster = spec["rayClusterSpec"] if kind == "RayJob" else spec
    if cluster["rayVersion"] != ray.__version__:
        problems.append(f"rayVersion {cluster['rayVersion']} is not this Ray, {ray.__version__}")
    if cluster.get("authOptions", {}).get("mode") != "token":
        problems.append("authOptions.mode must be token")
    head = cluster["headGroupSpec"]
    dashboard_host = head["rayStartParams"].get("dashboard-host")
    if kind == "RayJob":
        exposed = head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress")
        if dashboard_host != RAYJOB_DASHBOARD_HOST or exposed:
            problems.append(
                f"a RayJob's dashboard listens on {RAYJOB_DASHBOARD_HOST} behind a "
                f"ClusterIP Service, no ingress; got {dashboard_host}"
            )
    elif dashboard_host not in LOOPBACK_HOSTS:
        problems.append(f"dashboard-host {dashboard_host}: the dashboard must be on loopback")

    gpus_at_start = 0
    for group in [head, *cluster["workerGroupSpecs"]]:
        name = group.get("groupName", "head")
        pod = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        for container in pod["containers"]:
            mounted = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            if mounted.get(str(SHARED_ROOT)) not in claims:
                problems.append(f"{name}/{container['name']}: no shared claim at {SHARED_ROOT}")
        if group is head:
            continue
        low, replicas, high = group["minReplicas"], group["replicas"], group["maxReplicas"]
        if not low <= replicas <= high:
            problems.append(
                f"{name}: needs minReplicas {low} <= replicas {replicas} <= maxReplicas {high}"
            )
        gpus = sum(
            int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            for c in pod["containers"]
        )
        if gpus < 1:
            problems.append(f"{name}: no nvidia.com/gpu limit")
        gpus_at_start += low * gpus
    if gpus_at_start < PAPER.ray.num_workers:
        problems.append(
            f"{gpus_at_start} GPUs at start; the paper preset refuses fewer than "
            f"{PAPER.ray.num_workers}"
        )
    if kind == "RayJob":
        problems += runtime_env_problems(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")))
    return problems


def runtime_env_problems(runtime_env: dict[str, Any]) -> list[str]:
    """Ray's own runtime_env check, plus the field names Ray knows (it accepts unknown ones
    as plugin settings, so a misspelt field would be ignored)."""
    unknown = set(runtime_env) - set(RuntimeEnv.known_fields)
    if unknown:
        return [f"runtime_env fields Ray does not know: {sorted(unknown)}"]
    try:
        RuntimeEnv(**runtime_env)
    except (TypeError, ValueError) as exc:
        return [f"runtime_env: {exc}"]
    if runtime_env.get("env_vars", {}).get("NO_ALBUMENTATIONS_UPDATE") != "1":
        return ["runtime_env must set NO_ALBUMENTATIONS_UPDATE=1"]
    return []


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_ray_up_validation(name: str):
    prepared = validate_like_ray_up(load_yaml(CLUSTER_DIR / name))
    assert prepared["provider"]["type"] == name.removesuffix(".yaml")
    assert launcher_config_problems(prepared) == []


def test_ray_up_validation_rejects_a_misspelt_field(tmp_path: Path):
    text = (CLUSTER_DIR / "aws.yaml").read_text()
    broken = tmp_path / "aws.yaml"
    broken.write_text(text.replace("    min_workers: 3", "    min_worker: 3", 1))
    assert broken.read_text() != text
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_like_ray_up(load_yaml(broken))


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0", "loopback only"),
        ("    export RAY_AUTH_MODE=token;\n", "", "RAY_AUTH_MODE=token is not set"),
        ("    min_workers: 3", "    min_workers: 0", "GPUs at start"),
        (' "~/.ray/auth_token": "~/.ray/auth_token"', "", "Ray token"),
        ("boto3", "botocore", "must install boto3"),
    ],
)
def test_launcher_checks_catch_a_broken_config(tmp_path: Path, old: str, new: str, problem: str):
    text = (CLUSTER_DIR / "aws.yaml").read_text()
    broken = tmp_path / "aws.yaml"
    broken.write_text(text.replace(old, new))
    assert broken.read_text() != text
    problems = launcher_config_problems(validate_like_ray_up(load_yaml(broken)))
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_manifest_matches_the_crd(name: str):
    manifest = load_yaml(CLUSTER_DIR / name)
    assert manifest["kind"] == {"rayjob.yaml": "RayJob", "raycluster.yaml": "RayCluster"}[name]
    assert kuberay_manifest_problems(manifest) == []


def test_rayjob_ends_its_cluster():
    spec = load_yaml(CLUSTER_DIR / "rayjob.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0


def test_raycluster_autoscales():
    assert load_yaml(CLUSTER_DIR / "raycluster.yaml")["spec"]["enableInTreeAutoscaling"] is True


@pytest.mark.parametrize(
    ("name", "old", "new", "problem"),
    [
        ("rayjob.yaml", "shutdownAfterJobFinishes:", "shutdownAfterJobFinish:", "not allowed"),
        ("rayjob.yaml", 'dashboard-host: "0.0.0.0"', 'dashboard-host: "127.0.0.1"', "0.0.0.0"),
        ("rayjob.yaml", "NO_ALBUMENTATIONS_UPDATE", "NO_ALBUMENTATIONS", "runtime_env"),
        ("raycluster.yaml", "minReplicas: 3", "minReplicas: 5", "minReplicas 5 <= replicas"),
        ("raycluster.yaml", "nvidia.com/gpu: 1", "example.com/fpga: 1", "no nvidia.com/gpu"),
        ("raycluster.yaml", "mode: token", "mode: disabled", "authOptions.mode"),
        ("raycluster.yaml", "rayStartParams: {}", "rayStartParams: {num-gpus: 1}", "string"),
        ("raycluster.yaml", "mountPath: /mnt/shared", "mountPath: /data", "shared claim"),
    ],
)
def test_kuberay_checks_catch_a_broken_manifest(
    tmp_path: Path, name: str, old: str, new: str, problem: str
):
    text = (CLUSTER_DIR / name).read_text()
    broken = tmp_path / name
    broken.write_text(text.replace(old, new, 1))
    assert broken.read_text() != text
    problems = kuberay_manifest_problems(load_yaml(broken))
    assert any(problem in p for p in problems), problems


def test_runtime_env_file_reads_as_ray_job_submit_reads_it():
    runtime_env = parse_runtime_env_args(runtime_env=str(CLUSTER_DIR / "runtime_env.yaml"))
    assert runtime_env_problems(runtime_env) == []
    # Relative to where `ray job submit` runs: the repository root, never its bulky folders.
    assert runtime_env.get("working_dir", ".") == "."
    assert {".git/", ".venv/", "runs/"} <= set(runtime_env.get("excludes", []))


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_wsss_commands_parse_and_resolve(name: str):
    commands = wsss_commands(CLUSTER_DIR / name)
    assert commands, f"{name} shows no wsss command"
    assert [p for args in commands for p in wsss_command_problems(args)] == []


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("wsss runn --preset paper", "refuses"),
        ("wsss run --preset papr --runs-dir /mnt/shared/runs", "no preset"),
        ("wsss run --preset paper --runs-dir /mnt/shared/runs --set data.rooot=/x", "data.rooot"),
        ("wsss run --preset paper --runs-dir runs", "--runs-dir is not under"),
        ("wsss tune --space table9 --preset paper --runs-dir /mnt/shared/runs", "search space"),
    ],
)
def test_wsss_command_check_catches_a_bad_command(command: str, problem: str):
    (words,) = simple_commands(command)
    problems = wsss_command_problems(words[1:])
    assert any(problem in p for p in problems), problems


def test_commands_are_found_inside_shell_lines_and_comments(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text(
        "#   ray exec c.yaml 'wsss cache ls --runs-dir /mnt/shared/runs'\n"
        "#   ray job submit --address http://127.0.0.1:8265 -- \\\n"
        "#     wsss config show --preset smoke\n"
        "# wsss in prose, one space past the '#', is no command\n"
        "name: wsss\n"
        "steps:\n"
        "  - cd /x && RAY_ADDRESS=auto ~/venv/bin/wsss run --preset demo; echo done\n"
    )
    assert sorted(wsss_commands(config)) == [
        ["cache", "ls", "--runs-dir", "/mnt/shared/runs"],
        ["config", "show", "--preset", "smoke"],
        ["run", "--preset", "demo"],
    ]


def test_configs_ship_as_package_data():
    shipped = {p.name for p in resources.files("wsss.cluster").iterdir()}
    assert set(ALL_CONFIGS) <= shipped
    # The editable install reads the source folder, so check what a wheel would carry as well.
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    globs = package_data.get("wsss.cluster", [])
    assert all(any(PurePosixPath(n).match(g) for g in globs) for n in ALL_CONFIGS), globs
