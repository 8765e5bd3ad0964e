"""deploy/k8s checked without a cluster: every object against the Kubernetes API schemas of a
pinned version (kubernetes-validate, strict: an unknown field fails), every custom resource
against its CRD's schema kept in deploy/k8s/crd-schemas, the objects against each other
(selectors, port names, the router's discovery), and the manifests against the compose files
and the launcher (images, ports, probes, environment names, secrets, the rendered command)."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.34.0"
MANIFESTS = sorted(p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml"))
SECRET = "mixvllm"  # the Secret the docs create with kubectl; never a file in the repository
SECRET_KEYS = {"VLLM_API_KEY", "MIXVLLM_TERMINAL_TOKEN", "HF_TOKEN"}

Obj = dict[str, Any]


class _ResetLoader(yaml.SafeLoader):
    """Compose's `!reset` tag, kept as a marker."""


_ResetLoader.add_constructor("!reset", lambda loader, node: "!reset")


def load(name: str) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    assert all(isinstance(d, dict) for d in docs)
    return docs


def objects() -> Iterator[tuple[str, Obj]]:
    for name in MANIFESTS:
        if name != "kustomization.yaml":
            for obj in load(name):
                yield name, obj


def find(kind: str, name: str) -> Obj:
    (obj,) = [o for _, o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


@cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    out = {}
    for path in sorted((K8S / "crd-schemas").glob("*.json")):
        data = json.loads(path.read_text())
        out[(data["apiVersion"], data["kind"])] = data["schema"]
    return out


def _closed(schema: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict` does."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):  # fmt: skip
        out["additionalProperties"] = False
    return out


def validate(obj: Obj) -> None:
    """Raise on an object the API server (or its CRD) would refuse."""
    key = (obj["apiVersion"], obj["kind"])
    if key in crd_schemas():
        jsonschema.Draft7Validator(_closed(crd_schemas()[key])).validate(obj)
        for template in _embedded_pod_templates(obj):
            validate({"apiVersion": "v1", "kind": "PodTemplate",
                      "metadata": {"name": "embedded"}, "template": template})  # fmt: skip
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _embedded_pod_templates(obj: Obj) -> list[Obj]:
    """A LeaderWorkerSet's pod templates, which its CRD types only loosely."""
    if obj["kind"] != "LeaderWorkerSet":
        return []
    lwt = obj["spec"]["leaderWorkerTemplate"]
    return [lwt[k] for k in ("leaderTemplate", "workerTemplate") if k in lwt]


def containers(obj: Obj) -> list[Obj]:
    return [c for t in pod_templates(obj) for c in t["spec"]["containers"]]


def pod_templates(obj: Obj) -> list[Obj]:
    if obj["kind"] == "LeaderWorkerSet":
        return _embedded_pod_templates(obj)
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]]
    return []


def env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- the API schemas ------------------------------------------------------------------


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_matches_the_api_schema(name: str) -> None:
    docs = load(name)
    assert docs
    for obj in docs:
        if obj["kind"] == "Kustomization":
            continue
        try:
            validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']}: {e}", pytrace=False)


def test_every_custom_resource_has_its_crd_schema_in_the_repo() -> None:
    builtin = {"v1", "apps/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1"}
    custom = {(o["apiVersion"], o["kind"]) for _, o in objects() if o["apiVersion"] not in builtin}
    assert custom == set(crd_schemas())
    assert {k for _, k in custom} == {
        "ServiceMonitor", "PrometheusRule", "ScaledObject", "LeaderWorkerSet",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kind", "breaks"),
    [
        ("core/model-server.yaml", "Deployment", lambda o: o["spec"]["template"]["spec"]
         .__setitem__("contianers", o["spec"]["template"]["spec"].pop("containers"))),
        ("core/model-server.yaml", "Deployment", lambda o: o["spec"]["template"]["spec"]
         ["containers"][0]["startupProbe"].__setitem__("failureThreshold", "720")),
        ("monitoring/service-monitor.yaml", "ServiceMonitor",
         lambda o: o["spec"]["endpoints"][0].__setitem__("intervall", "15s")),
        ("monitoring/prometheus-rule.yaml", "PrometheusRule",
         lambda o: o["spec"]["groups"][0]["rules"][0].__setitem__("fire_for", "2m")),
        ("autoscaling/scaled-object.yaml", "ScaledObject",
         lambda o: o["spec"].__setitem__("minReplicaCount", "one")),
        ("multinode/leaderworkerset.yaml", "LeaderWorkerSet",
         lambda o: o["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
         .__setitem__("imagePullPolicy", 3)),
    ],
)  # fmt: skip
def test_the_validation_refuses_a_broken_object(name: str, kind: str, breaks: Any) -> None:
    (obj,) = [o for o in load(name) if o["kind"] == kind][:1]
    broken = copy.deepcopy(obj)
    breaks(broken)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(broken)


def test_kustomization_lists_the_core_and_names_every_image() -> None:
    (kustomization,) = load("kustomization.yaml")
    core = sorted(n for n in MANIFESTS if n.startswith("core/"))
    assert sorted(kustomization["resources"]) == core
    assert all((K8S / n).is_file() for n in kustomization["resources"])
    images = {c["image"].split(":")[0] for n, o in objects() if n.startswith("core/")
              for c in containers(o) if o["kind"] in ("Deployment", "StatefulSet")}  # fmt: skip
    assert images == {i["name"] for i in kustomization["images"]}


# --- the objects agree with each other -----------------------------------------------


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_select_pods_and_name_their_ports() -> None:
    templates = [t for _, o in objects() for t in pod_templates(o)]
    for _, svc in objects():
        if svc["kind"] != "Service":
            continue
        pods = [t for t in templates if _matches(svc["spec"]["selector"], t["metadata"]["labels"])]
        assert pods, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            names = {p["name"] for t in pods for c in t["spec"]["containers"]
                     for p in c.get("ports", [])}  # fmt: skip
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)


def test_service_monitors_scrape_named_ports_of_selected_services() -> None:
    services = [o for _, o in objects() if o["kind"] == "Service"]
    for monitor in load("monitoring/service-monitor.yaml"):
        selected = [s for s in services
                    if _matches(monitor["spec"]["selector"]["matchLabels"],
                                s["metadata"]["labels"])]  # fmt: skip
        assert selected, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            for svc in selected:
                assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    (terminal,) = [m for m in load("monitoring/service-monitor.yaml")
                   if m["metadata"]["name"] == "terminal"]  # fmt: skip
    credentials = terminal["spec"]["endpoints"][0]["authorization"]["credentials"]
    assert credentials == {"name": SECRET, "key": "MIXVLLM_TERMINAL_TOKEN"}


def test_the_operator_gets_the_same_alerts_and_job_names_as_compose() -> None:
    prometheus = ROOT / "deploy" / "prometheus"
    alerts = yaml.safe_load((prometheus / "alerts.yml").read_text())
    (rule,) = load("monitoring/prometheus-rule.yaml")
    assert rule["spec"]["groups"] == alerts["groups"]
    compose_jobs = {j["job_name"] for j in yaml.safe_load(
        (prometheus / "prometheus.yml").read_text())["scrape_configs"]}  # fmt: skip
    k8s_jobs = set()
    for monitor in load("monitoring/service-monitor.yaml"):
        for endpoint in monitor["spec"]["endpoints"]:
            (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
            k8s_jobs.add(relabel["replacement"])
    assert k8s_jobs == compose_jobs
    selected = {job for group in alerts["groups"] for r in group["rules"]
                for job in re.findall(r'job="([^"]+)"', r["expr"])}  # fmt: skip
    assert selected <= k8s_jobs


def _router_args() -> dict[str, str]:
    (router,) = containers(find("Deployment", "router"))
    args = router["args"]
    out = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    out["--selector"] = args[args.index("--selector") + 1]
    return out


def test_chain_is_terminal_then_router_then_model() -> None:
    args = _router_args()
    (terminal,) = containers(find("StatefulSet", "terminal"))
    router_port = next(p["port"] for p in find("Service", "router")["spec"]["ports"]
                       if p["name"] == "http")  # fmt: skip
    assert env(terminal)["MODEL_SERVER_URL"] == f"http://router:{router_port}/v1"
    assert args["--port"] == str(router_port)
    assert args["--policy"] == "consistent_hash"  # a conversation stays on one replica
    key, value = args["--selector"].split("=")
    api_pods = [t for _, o in objects() for t in pod_templates(o)
                if t["metadata"]["labels"].get(key) == value]  # fmt: skip
    assert len(api_pods) == 2  # the single-node Deployment and the multi-node leaders
    for pod in api_pods:
        ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert ports == {int(args["--service-discovery-port"])}
    assert args["--service-discovery-namespace"] == find("Namespace", "mixvllm")["metadata"]["name"]


def test_network_policies_let_only_the_router_reach_the_model() -> None:
    policies = {o["metadata"]["name"]: o for _, o in objects() if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["spec"] == {"podSelector": {},
                                                        "policyTypes": ["Ingress"]}  # fmt: skip
    model = policies["model-from-router"]["spec"]
    api = model["ingress"][0]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "router"}}} in api["from"]
    assert all("terminal" not in json.dumps(rule) for rule in model["ingress"])
    router = policies["router-from-terminal"]["spec"]["ingress"][0]
    assert router["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name":
                                                               "terminal"}}}]  # fmt: skip


def test_model_pods_have_gpus_shared_memory_and_a_long_startup_budget() -> None:
    for _, obj in objects():
        for template in pod_templates(obj):
            component = template["metadata"]["labels"].get("app.kubernetes.io/component", "")
            if not component.startswith("model"):
                continue
            spec = template["spec"]
            (container,) = spec["containers"]
            gpus = container["resources"]["limits"]["nvidia.com/gpu"]
            assert int(gpus) >= 1
            shm = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"}
            (volume,) = [v for v in spec["volumes"] if v["name"] in shm]
            assert volume["emptyDir"]["medium"] == "Memory"
            cache_mount = {m["name"] for m in container["volumeMounts"]
                           if m["mountPath"].endswith("/.cache/huggingface")}  # fmt: skip
            (cache_volume,) = [v for v in spec["volumes"] if v["name"] in cache_mount]
            assert cache_volume["persistentVolumeClaim"]["claimName"] == "hf-cache"
            if "startupProbe" in container:
                probe = container["startupProbe"]
                # A 70B model (~140 GB) at 25 MB/s takes ~1.5 h to download.
                assert probe["periodSeconds"] * probe["failureThreshold"] >= 90 * 60
                for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert container[kind]["httpGet"]["path"] == "/health"


def test_secrets_come_from_the_one_secret_and_never_from_a_file() -> None:
    assert not [o for _, o in objects() if o["kind"] == "Secret"]
    for _, obj in objects():
        for c in containers(obj):
            for name, value in env(c).items():
                if name in SECRET_KEYS:
                    assert value == {
                        "secretKeyRef": {
                            "name": SECRET,
                            "key": name,
                            **({"optional": True} if name == "HF_TOKEN" else {}),
                        }
                    }
                else:
                    assert not re.search(r"(?i)key|token|secret|password", name), name


# --- the manifests agree with the compose files and the launcher ----------------------


def _compose(path: str) -> Obj:
    data = yaml.load((ROOT / path).read_text(), Loader=_ResetLoader)
    assert isinstance(data, dict)
    return data


def _interpolate(value: Any, dotenv: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` / `${VAR:?error}` with `dotenv` as the .env file."""

    def one(m: re.Match[str]) -> str:
        name, op, rest = m[1], m[2], m[3] or ""
        if dotenv.get(name):
            return dotenv[name]
        assert op != ":?", f"{name} is required"
        return rest

    return re.sub(r"\$\{([A-Z0-9_]+)(:-|:\?)?([^}]*)\}", one, str(value))


DOTENV = {"VLLM_API_KEY": "key", "MIXVLLM_TERMINAL_TOKEN": "token", "HF_TOKEN": "hf",
          "NODE_IP": "10.0.0.1", "HEAD_IP": "10.0.0.1"}  # fmt: skip


def _k8s_env(container: Obj, **pod: str) -> dict[str, str]:
    out = {}
    for name, value in env(container).items():
        if isinstance(value, dict) and "secretKeyRef" in value:
            out[name] = DOTENV[value["secretKeyRef"]["key"]]
        elif isinstance(value, dict):  # fieldRef: the pod's own address
            out[name] = pod["ip"]
        else:
            out[name] = value
    return out


def launcher_argv(environment: dict[str, str], tmp_path: Path) -> list[str]:
    run_env = {**environment, "PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT),
               "MIXVLLM_VLLM_BIN": "vllm",
               "MIXVLLM_STATE_DIR": str(tmp_path / "state")}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "model_server", "--dry-run"], env=run_env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return shlex.split(done.stdout)


def test_images_ports_env_and_probes_agree_with_compose() -> None:
    services = _compose("docker-compose.yml")["services"]
    pairs = [("model-server", containers(find("Deployment", "model-server"))[0]),
             ("terminal-server", containers(find("StatefulSet", "terminal"))[0])]  # fmt: skip
    for service, container in pairs:
        svc = services[service]
        assert container["image"].split(":")[0] == svc["image"].split(":")[0]
        compose_env = svc["environment"]
        assert set(env(container)) == set(compose_env), service
        for name, value in env(container).items():
            if name in SECRET_KEYS:  # from the Secret here, from .env (required) there
                assert f"${{{name}" in compose_env[name]
            elif "$" not in compose_env[name] and name != "MODEL_SERVER_URL":
                assert value == compose_env[name], (service, name)
        published = {int(str(p).rsplit(":", 1)[1]) for p in svc["ports"]}
        assert {p["containerPort"] for p in container["ports"]} == published
    model = pairs[0][1]
    assert model["ports"][0]["containerPort"] == int(services["model-server"]["environment"]
                                                     ["MODEL_SERVER_PORT"])  # fmt: skip
    # The compose health check and the probes ask the same server on the same port.
    health = services["model-server"]["healthcheck"]["test"]
    assert health[-1] == f"http://127.0.0.1:{model['ports'][0]['containerPort']}"
    terminal = pairs[1][1]
    dockerfile = (ROOT / "Dockerfile.terminal").read_text().replace("\\\n", " ")
    check = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", dockerfile)
    assert check is not None
    for kind in ("readinessProbe", "livenessProbe"):
        assert terminal[kind]["exec"]["command"] == json.loads(check[1])
    # Compose's hardening, the same in the pod.
    compose_term = services["terminal-server"]
    sc = terminal["securityContext"]
    assert sorted(sc["capabilities"]["add"]) == sorted(compose_term["cap_add"])
    assert sc["capabilities"]["drop"] == compose_term["cap_drop"]
    assert sc["readOnlyRootFilesystem"] is compose_term["read_only"]
    assert sc["allowPrivilegeEscalation"] is False
    home = {m["mountPath"] for m in terminal["volumeMounts"]}
    assert {v.split(":")[1] for v in compose_term["volumes"]} | set(compose_term["tmpfs"]) == home


def test_the_launcher_renders_the_same_engine_command(tmp_path: Path) -> None:
    """The model server's environment, from compose and from the Deployment, gives the same
    `vllm serve` command line; so do the multi-node head and the LeaderWorkerSet's leader."""
    services = _compose("docker-compose.yml")["services"]
    compose_env = {k: _interpolate(v, DOTENV)
                   for k, v in services["model-server"]["environment"].items()}  # fmt: skip
    (model,) = containers(find("Deployment", "model-server"))
    k8s = launcher_argv(_k8s_env(model), tmp_path)
    assert k8s == launcher_argv(compose_env, tmp_path)
    assert k8s[k8s.index("--port") + 1] == str(model["ports"][0]["containerPort"])

    multinode = _compose("deploy/compose.multinode.yml")
    head = {k: _interpolate(v, DOTENV) for k, v in multinode["services"]["head"]["environment"]
            .items()}  # fmt: skip
    lws = find("LeaderWorkerSet", "model-multinode")
    leader, worker = (t["spec"]["containers"][0] for t in _embedded_pod_templates(lws))
    size = lws["spec"]["leaderWorkerTemplate"]["size"]
    # What LWS sets in each pod, read by the container's command into the launcher's names.
    assert "NODE_RANK=$LWS_WORKER_INDEX" in leader["args"][0]
    assert "MASTER_ADDR=$LWS_LEADER_ADDRESS" in leader["args"][0]
    assert "NNODES=$LWS_GROUP_SIZE" in leader["args"][0]
    assert leader["args"] == worker["args"] and env(leader) == env(worker)
    pod = {"NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1", "NNODES": str(size)}
    lws_env = {**_k8s_env(leader, ip="10.0.0.1"), **pod}
    assert set(_k8s_env(leader, ip="x")) | set(pod) == set(head) | {"NNODES"}
    argv = launcher_argv(lws_env, tmp_path)
    assert argv == launcher_argv(head, tmp_path)
    # Each pod holds its share of the model's GPUs: tensor x pipeline parallel over the nodes.
    world = int(argv[argv.index("--tensor-parallel-size") + 1]) * int(
        argv[argv.index("--pipeline-parallel-size") + 1]
    )
    for c in (leader, worker):
        assert int(c["resources"]["limits"]["nvidia.com/gpu"]) * size == world
