"""Schema validation of rendered objects, as an API server would do it before storing them.

Built-in kinds: the Kubernetes OpenAPI schemas of one stated version, as shipped by the PyPI
package kubernetes-validate, in their strict form (unknown fields rejected, as `kubectl apply`
does by default with server-side field validation).
Custom resources: the openAPIV3Schema of the served version in the vendored CRD files
(tests/k8s/crds, origins in its README), made strict the same way wherever the schema does not
say `x-kubernetes-preserve-unknown-fields`, plus the CRD's CEL rules (`x-kubernetes-validations`)
evaluated with cel-python; transition rules (those reading `oldSelf`) only run on updates and
are skipped, as on a create.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

KUBERNETES_VERSION = "1.35.0"
CRD_DIR = Path(__file__).resolve().parent / "crds"


def validate_builtin(obj: dict) -> str | None:
    """None when `obj` is valid for KUBERNETES_VERSION; else the first error, one line."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        return e.message
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return f"{where}: {e.message}"
    return None


def is_builtin(obj: dict) -> bool:
    """Whether kubernetes-validate has a schema for this kind (then it is no custom resource)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=False)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        return True
    return True


class CrdSchemas:
    """The vendored CRDs, by (group/version, kind)."""

    def __init__(self, directory: Path = CRD_DIR):
        self.schemas: dict[tuple[str, str], dict] = {}
        self.origin: dict[tuple[str, str], str] = {}
        for path in sorted(directory.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served"):
                        continue
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    self.schemas[key] = version["schema"]["openAPIV3Schema"]
                    self.origin[key] = path.name

    def validate(self, obj: dict) -> list[str]:
        """Every problem with `obj` (empty when valid); an unknown kind is one problem."""
        import jsonschema

        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        schema = self.schemas.get(key)
        if schema is None:
            recorded = RecordedKeys.load().get(key)
            if recorded is None:
                return [f"no vendored CRD serves {key[0]} {key[1]} (tests/k8s/crds), and its keys are not recorded (tests/k8s/crd-keys.yml)"]
            return recorded.problems(obj)
        strict = _strict(schema)
        # Draft 4: OpenAPI v3.0 schemas use its keywords (boolean exclusiveMinimum and the like).
        validator = jsonschema.Draft4Validator(strict)
        problems = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
        if not problems:
            problems += _cel_problems(schema, obj, "")
        return problems


def _strict(schema: dict) -> dict:
    """A copy of a structural schema that rejects fields it does not declare."""
    schema = copy.deepcopy(schema)

    def walk(node: dict, root: bool) -> None:
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if props is not None and not node.get("x-kubernetes-preserve-unknown-fields"):
            # metadata is ObjectMeta, which the CRD schema leaves open (type: object).
            node.setdefault("additionalProperties", False)
            if root:
                props.setdefault("metadata", {"type": "object"})
                props.setdefault("apiVersion", {"type": "string"})
                props.setdefault("kind", {"type": "string"})
        for child in (props or {}).values():
            walk(child, False)
        # Not into allOf/anyOf/oneOf: in a structural schema they only constrain values that the
        # main schema declares, so making them strict would refuse valid objects.
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], False)

    walk(schema, True)
    return schema


def _cel_problems(schema: dict, value, where: str) -> list[str]:
    """The CEL rules of `schema` and its children that `value` breaks."""
    problems = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        if not _cel_true(rule["rule"], value):
            problems.append(f"{where or '(root)'}: {rule.get('message', rule['rule'])} (CEL: {rule['rule']})")
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value:
                problems += _cel_problems(child, value[name], f"{where}/{name}".lstrip("/"))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, child in value.items():
                problems += _cel_problems(extra, child, f"{where}/{name}".lstrip("/"))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            problems += _cel_problems(schema["items"], child, f"{where}/{i}".lstrip("/"))
    return problems


def _cel_true(rule: str, value) -> bool:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


class RecordedKeys:
    """A custom resource whose CRD is not vendored: each field path it may use, recorded with
    the upstream CRD lines that declare it at the pinned tag (tests/k8s/crd-keys.yml). Weaker
    than a schema (no types, no CEL), but a misspelt or invented field is still refused."""

    def __init__(self, source: str, keys: dict[str, str]):
        self.source = source
        self.keys = keys

    @staticmethod
    def load() -> dict[tuple[str, str], "RecordedKeys"]:
        doc = yaml.safe_load((CRD_DIR.parent / "crd-keys.yml").read_text())
        return {(k["apiVersion"], k["kind"]): RecordedKeys(k["source"], k["keys"]) for k in doc["kinds"]}

    def problems(self, obj: dict) -> list[str]:
        out = []
        for path in _paths(obj.get("spec", {}), "spec"):
            if not any(path == k or (k.endswith(".*") and path.startswith(k[:-1])) for k in self.keys):
                out.append(f"{path}: not a field of {obj['kind']} at {self.source} (tests/k8s/crd-keys.yml)")
        return out


def _paths(node, prefix: str):
    """Leaf paths of `node`, `[]` for list items: spec.groups[].rules[].alert."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _paths(v, f"{prefix}.{k}")
    elif isinstance(node, list) and node:
        for v in node:
            yield from _paths(v, f"{prefix}[]")
    else:
        yield prefix
