"""The Helm chart's output checked against the Kubernetes API schemas, by
an independent validator (kubernetes-validate, strict), and meshroot's own
objects against the CRDs' OpenAPI schemas (jsonschema)."""

import os
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "meshroot"
KUBERNETES = "1.33.0"
OWN_KINDS = {"Mesh", "Issuer", "ClusterIssuer"}
THIRD_PARTY_KINDS = {"ServiceMonitor"}


def helm():
    path = os.environ.get("MESHROOT_HELM")
    if path:
        return path
    out = subprocess.run([str(REPO / "scripts" / "install-helm.sh")], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def render(*args):
    out = subprocess.run(
        [helm(), "template", "mr", str(CHART), "--namespace", "meshroot", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def crd_schemas():
    schemas = {}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            kind = crd["spec"]["names"]["kind"]
            version = crd["spec"]["versions"][0]
            schemas[kind] = version["schema"]["openAPIV3Schema"]
    return schemas


VALUES = {
    "default": [],
    "openshift": ["-f", str(CHART / "ci" / "openshift-values.yaml")],
    "features-off": ["--set", "certManager.enabled=false", "--set", "kubernetesCSRSigner.enabled=false",
                     "--set", "replicaCount=1", "--set", "root.mode=offline"],
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_rendered_builtin_objects_match_the_kubernetes_schemas(name):
    docs = render(*VALUES[name])
    builtin = [d for d in docs if d["kind"] not in OWN_KINDS | THIRD_PARTY_KINDS]
    assert {d["kind"] for d in builtin} >= {"Deployment", "Service", "ServiceAccount", "ClusterRole", "Role"}
    for doc in builtin:
        # Raises ValidationError, naming the field, on any mismatch.
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_broken_object_is_caught_by_the_validator():
    deploy = next(d for d in render() if d["kind"] == "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["bogus"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, KUBERNETES, strict=True)


def test_the_crds_are_valid_customresourcedefinitions():
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                kubernetes_validate.validate(crd, KUBERNETES, strict=True)


def test_rendered_meshes_and_issuers_match_their_crd_schemas():
    schemas = crd_schemas()
    docs = render(*VALUES["openshift"])
    own = [d for d in docs if d["kind"] in OWN_KINDS]
    assert sorted(d["kind"] for d in own) == ["ClusterIssuer", "Issuer", "Mesh", "Mesh"]
    for doc in own:
        jsonschema.validate({"spec": doc["spec"]}, schemas[doc["kind"]])
    bad = dict(own[0])
    bad["spec"] = dict(bad["spec"], mode="Sidecar") if bad["kind"] == "Mesh" else dict(bad["spec"], signer="root")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": bad["spec"]}, schemas[bad["kind"]])
