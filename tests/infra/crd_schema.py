"""The vendored CRDs (``tests/infra/crds``, see its README) as JSON Schemas that refuse unknown
fields, for checking the custom resources the program renders.

A CRD's ``openAPIV3Schema`` is a Kubernetes *structural* schema, not a JSON Schema. The API
server prunes (or, with strict field validation, refuses) any field the schema does not
specify, unless ``x-kubernetes-preserve-unknown-fields`` is set. The conversion below makes
that refusal explicit and maps the Kubernetes extensions onto JSON Schema:

* an object whose ``properties`` or ``additionalProperties`` are not given, or whose
  ``properties`` are, takes ``additionalProperties: false`` (what pruning would leave is
  exactly what is specified) unless ``x-kubernetes-preserve-unknown-fields`` is true;
* ``x-kubernetes-int-or-string`` is an integer or a string; ``nullable`` admits null;
* ``x-kubernetes-embedded-resource`` implies ``apiVersion``, ``kind`` and ``metadata``;
* ``metadata`` of the object and of an embedded resource is ObjectMeta, checked here only
  for the fields Record sets (the API server validates ObjectMeta itself);
* ``allOf``/``anyOf``/``oneOf``/``not`` only constrain values in a structural schema (they
  may not introduce fields), so their branches are converted without the refusal.

* ``format: int32`` bounds an integer to what the controller's Go ``int32`` holds.

``x-kubernetes-validations`` (CEL rules; the vendored CRDs have none, which
test_crd_schemas checks) and other formats are not evaluated.

One field the CRD leaves open is closed here: an AlertmanagerConfig's child routes
(``spec.route.routes[]``) are raw JSON to the API server, and the operator reads each as a
``v1alpha1.Route`` (``Route.ChildRoutes``, plain ``json.Unmarshal``, which drops a misspelt
field without a word), so each is checked against the schema of ``spec.route`` itself.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"

# The ObjectMeta fields a rendered object may carry; anything else is a mistake of ours.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}
_JUNCTORS = ("allOf", "anyOf", "oneOf")
# Kubernetes-only keywords the JSON Schema validator need not see.
_DROP = ("nullable", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")


class _Loader(yaml.SafeLoader):
    """PyYAML reads a bare ``=`` (an AlertmanagerConfig matchType) as the YAML 1.1 'value'
    tag, which it cannot build; YAML 1.2 and Kubernetes read a string."""


_Loader.add_constructor(
    "tag:yaml.org,2002:value",
    lambda loader, node: loader.construct_scalar(node),
)


def _load(path: Path) -> dict[str, Any]:
    """One CRD file. A Helm chart's copy is a template: its ``{{ … }}`` lines are dropped."""
    text = path.read_text()
    if "{{" in text:
        text = "\n".join(line for line in text.splitlines() if "{{" not in line)
    document = yaml.load(text, Loader=_Loader)
    assert isinstance(document, dict), path
    assert document["kind"] == "CustomResourceDefinition", path
    return document


def load_crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CRD, for every vendored CRD; a kind vendored twice is an error."""
    crds: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*/*.yaml")):
        crd = _load(path)
        key = (crd["spec"]["group"], crd["spec"]["names"]["kind"])
        assert key not in crds, f"{key} vendored twice"
        crds[key] = crd
    return crds


def to_json_schema(schema: dict[str, Any], *, strict: bool = True) -> dict[str, Any]:
    """One structural schema node as a JSON Schema (draft 2020-12) node. ``strict`` is false
    inside value-validation junctors, where no field may be refused."""
    out = {k: copy.deepcopy(v) for k, v in schema.items() if k not in _DROP}
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    if "properties" in schema:
        out["properties"] = {
            name: to_json_schema(sub, strict=strict) for name, sub in schema["properties"].items()
        }
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(schema["additionalProperties"], strict=strict)
    if isinstance(schema.get("items"), dict):
        out["items"] = to_json_schema(schema["items"], strict=strict)
    for junctor in _JUNCTORS:
        if junctor in schema:
            out[junctor] = [to_json_schema(branch, strict=False) for branch in schema[junctor]]
    if "not" in schema:
        out["not"] = to_json_schema(schema["not"], strict=False)
    if schema.get("x-kubernetes-embedded-resource"):
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = copy.deepcopy(OBJECT_META)
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [*out.get("anyOf", []), {"type": ["integer", "string"]}]
    if (
        strict
        and schema.get("type") == "object"
        and not preserve
        and not isinstance(schema.get("additionalProperties"), dict)
        and schema.get("additionalProperties") is not True
    ):
        out["additionalProperties"] = False
    if schema.get("format") == "int32" and schema.get("type") == "integer":
        out["minimum"] = max(out.get("minimum", -(2**31)), -(2**31))
        out["maximum"] = min(out.get("maximum", 2**31 - 1), 2**31 - 1)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def custom_resource_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The JSON Schema of one served version of ``crd``, its metadata as ObjectMeta."""
    served = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    assert served, f"{crd['metadata']['name']} serves no version {version}"
    schema = to_json_schema(served[0]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = copy.deepcopy(OBJECT_META)
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version}"}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    if crd["spec"]["names"]["kind"] == "AlertmanagerConfig":
        route = schema["properties"]["spec"]["properties"]["route"]
        assert route["properties"]["routes"]["items"] == {}, "child routes now have a schema"
        route["properties"]["routes"]["items"] = {"$ref": "#/$defs/route"}
        schema["$defs"] = {"route": copy.deepcopy(route)}
    return schema
