"""The Kubernetes manifests parse, and the names in them agree with each other and with the
driver (driver name, socket path, secret keys, StorageClass parameters, flags)."""

from __future__ import annotations

import glob
import os
import shlex

import pytest

from cachefs.cli import build_parser
from cachefs.mount.csi_names import (
    CONTEXT_CACHE_GROUP,
    CONTEXT_MOUNT_OPTIONS,
    CONTEXT_SUBDIR,
    DRIVER_NAME,
    PARAMETERS,
    SECRET_KEYS,
    SOCKET_NAME,
)
from cachefs.mount.helper import translate

yaml = pytest.importorskip("yaml")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "mount", "deploy")
PLUGIN_DIR = f"/var/lib/kubelet/plugins/{DRIVER_NAME}"


@pytest.fixture(scope="module")
def docs():
    out = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "*.yaml"))):
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if doc:
                    assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
                    out.append(doc)
    return out


def of(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name=None):
    found = [d for d in of(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def container(pod_spec, name):
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def arg(c, flag):
    return next(a.split("=", 1)[1] for a in c["args"] if a.startswith(flag + "="))


def test_every_kind_is_there(docs):
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CSIDriver", "DaemonSet", "Deployment", "ServiceAccount", "ClusterRole",
            "ClusterRoleBinding", "StorageClass", "Secret", "PersistentVolume", "PersistentVolumeClaim",
            "Job"} <= kinds


def test_driver_name_and_socket_agree(docs):
    drv = one(docs, "CSIDriver")
    assert drv["metadata"]["name"] == DRIVER_NAME
    assert drv["spec"]["attachRequired"] is False and drv["spec"]["podInfoOnMount"] is True
    assert all(sc["provisioner"] == DRIVER_NAME for sc in of(docs, "StorageClass"))
    for pv in of(docs, "PersistentVolume"):
        assert pv["spec"]["csi"]["driver"] == DRIVER_NAME

    node = one(docs, "DaemonSet", "cachefs-csi-node")["spec"]["template"]["spec"]
    plugin, registrar = container(node, "cachefs-plugin"), container(node, "node-driver-registrar")
    assert plugin["securityContext"]["privileged"] is True
    assert arg(plugin, "--endpoint") == f"unix:///csi/{SOCKET_NAME}" and arg(plugin, "--mode") == "node"
    assert arg(registrar, "--csi-address") == f"/csi/{SOCKET_NAME}"
    assert arg(registrar, "--kubelet-registration-path") == f"{PLUGIN_DIR}/{SOCKET_NAME}"
    volumes = {v["name"]: v for v in node["volumes"]}
    mounts = {m["name"]: m for m in plugin["volumeMounts"]}
    assert volumes[mounts["plugin-dir"]["name"]]["hostPath"]["path"] == PLUGIN_DIR
    assert mounts["plugin-dir"]["mountPath"] == "/csi"
    kubelet = mounts["kubelet-dir"]
    assert kubelet["mountPath"] == "/var/lib/kubelet" and kubelet["mountPropagation"] == "Bidirectional"
    assert volumes["fuse-device"]["hostPath"]["path"] == "/dev/fuse"
    assert mounts["cache-dir"]["mountPath"] == arg(plugin, "--cache-dir")
    assert "hostPath" in volumes["cache-dir"]
    assert mounts["state-dir"]["mountPath"] == os.path.dirname(arg(plugin, "--state-dir"))
    probe = container(node, "liveness-probe")
    assert arg(probe, "--csi-address") == f"/csi/{SOCKET_NAME}"
    assert str(arg(probe, "--health-port")) == str(plugin["ports"][0]["containerPort"])

    ctrl = one(docs, "Deployment")["spec"]["template"]["spec"]
    cplugin, prov = container(ctrl, "cachefs-plugin"), container(ctrl, "csi-provisioner")
    assert arg(cplugin, "--mode") == "controller"
    assert arg(cplugin, "--endpoint") == "unix://" + arg(prov, "--csi-address")


def test_plugin_args_are_real_cachefs_flags(docs):
    parser = build_parser()
    for kind, name in (("DaemonSet", "cachefs-csi-node"), ("Deployment", None)):
        plugin = container(one(docs, kind, name)["spec"]["template"]["spec"], "cachefs-plugin")
        args = [a.replace("$(NODE_NAME)", "node-1").replace("$(POD_IP)", "10.0.0.1") for a in plugin["args"]]
        parsed = parser.parse_args(args)
        assert parsed.command == "csi"
    member = container(one(docs, "DaemonSet", "cachefs-cache-node")["spec"]["template"]["spec"], "member")
    parsed = parser.parse_args([a.replace("$(POD_IP)", "10.0.0.1") for a in member["args"]])
    assert parsed.command == "mount" and parsed.meta_url == "-" and parsed.cache_group
    assert {e["name"] for e in member["env"]} >= {"CACHEFS_META_URL", "POD_IP"}
    for job in of(docs, "Job"):
        for c in job["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("cachefs/"):
                assert parser.parse_args(c["args"]).command == "warmup"


def test_secrets_and_parameters_agree(docs):
    secret = one(docs, "Secret")
    assert set(secret["stringData"]) == set(SECRET_KEYS)
    name, ns = secret["metadata"]["name"], secret["metadata"]["namespace"]
    for sc in of(docs, "StorageClass"):
        for key, value in sc["parameters"].items():
            if key.startswith("csi.storage.k8s.io/"):
                assert value == (ns if key.endswith("-namespace") else name), key
            else:
                assert key in PARAMETERS, key
        group = sc["parameters"].get(CONTEXT_CACHE_GROUP)
        translate(",".join(filter(None, [sc["parameters"][CONTEXT_MOUNT_OPTIONS], group and f"cache-group={group}"])))
        assert {"csi.storage.k8s.io/provisioner-secret-name", "csi.storage.k8s.io/node-publish-secret-name"} \
            <= set(sc["parameters"])
    for pv in of(docs, "PersistentVolume"):
        csi = pv["spec"]["csi"]
        assert csi["nodePublishSecretRef"] == {"name": name, "namespace": ns}
        assert set(csi["volumeAttributes"]) <= {CONTEXT_SUBDIR, CONTEXT_MOUNT_OPTIONS}
        translate(csi["volumeAttributes"].get(CONTEXT_MOUNT_OPTIONS, ""))


def test_claims_accounts_and_jobs_agree(docs):
    pvs = {d["metadata"]["name"] for d in of(docs, "PersistentVolume")}
    claims = {d["metadata"]["name"]: d for d in of(docs, "PersistentVolumeClaim")}
    scs = {d["metadata"]["name"] for d in of(docs, "StorageClass")}
    for pvc in claims.values():
        spec = pvc["spec"]
        assert spec.get("volumeName") in pvs or spec["storageClassName"] in scs
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in of(docs, "ServiceAccount")}
    for kind, name in (("DaemonSet", "cachefs-csi-node"), ("Deployment", None)):
        d = one(docs, kind, name)
        assert (d["metadata"]["namespace"], d["spec"]["template"]["spec"]["serviceAccountName"]) in accounts
    roles = {d["metadata"]["name"] for d in of(docs, "ClusterRole")}
    for b in of(docs, "ClusterRoleBinding"):
        assert b["roleRef"]["name"] in roles
        for s in b["subjects"]:
            assert (s["namespace"], s["name"]) in accounts
    jobs = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in of(docs, "Job")}
    train = next(j for j in jobs.values() if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                                                   for c in j["containers"]))
    warm = next(j for j in jobs.values() if any("warmup" in c.get("args", []) for c in j["containers"]))
    for spec in (train, warm):
        for v in spec["volumes"]:
            assert v["persistentVolumeClaim"]["claimName"] in claims
    assert train["nodeSelector"] == warm["nodeSelector"]  # the warmed cache is that node's
    # warmup writes its request to .control: a read-only publish would refuse the open
    assert not any(v["persistentVolumeClaim"].get("readOnly") for v in warm["volumes"])
    assert not any(m.get("readOnly") for c in warm["containers"] for m in c["volumeMounts"])


def test_dockerfile_builds_the_cli():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = f.read()
    entry = next(line for line in text.splitlines() if line.startswith("ENTRYPOINT"))
    assert "cachefs" in shlex.split(entry.replace("[", " ").replace("]", " ").replace(",", " "))[1]
    copied = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    for path in ("cachefs", "meta", "mount", "pyproject.toml"):  # what `pip install .` needs
        assert any(path in c for c in copied), path


def test_generated_csi_modules_match_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_csi", os.path.join(ROOT, "mount", "gen_csi.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for path in gen.generate(str(tmp_path)):
        name = os.path.basename(path)
        with open(path) as fresh, open(os.path.join(ROOT, "mount", name)) as committed:
            assert fresh.read() == committed.read(), f"mount/{name} is stale: run python3 mount/gen_csi.py"
