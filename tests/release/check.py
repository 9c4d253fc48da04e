#!/usr/bin/env python3
"""The release workflow: actionlint finds nothing, and it does what a release must: on a version
tag, build for amd64 and arm64, push to this repository's registry with an SBOM and provenance,
take the build's pins from .env, and pin the production overlay's image (the name it uses) to the
pushed digest. Then each rule is broken on purpose on a copy and must be caught.

Prints one `ok - …` / `not ok - …` line per check; exit 1 on any failure. ACTIONLINT is the
command that lints (run.sh sets it)."""
import copy
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "release.yml")
OVERLAY = os.path.join(ROOT, "deploy", "k8s", "overlays", "production", "kustomization.yaml")
PINS = ("RUST_IMAGE", "RUNTIME_IMAGE", "CARGO_CHEF_VERSION")
failed = 0


def check(name, problems):
    global failed
    if problems:
        failed += 1
        print(f"not ok - {name}: {'; '.join(problems)}", flush=True)
    else:
        print(f"ok - {name}", flush=True)


def actionlint(doc_text):
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write(doc_text)
    try:
        r = subprocess.run([*shlex.split(os.environ["ACTIONLINT"]), f.name], capture_output=True, text=True, timeout=120)
        return [line for line in (r.stdout + r.stderr).splitlines() if line.strip()] or ([] if r.returncode == 0 else [f"exit {r.returncode}"])
    finally:
        os.unlink(f.name)


def steps(wf):
    return [(job, s) for job, j in wf["jobs"].items() for s in j.get("steps", [])]


def rules(wf):
    """What the release must do; the problems found."""
    problems = []
    on = wf.get("on") or wf.get(True) or {}   # YAML 1.1 reads a bare `on` as True
    tags = ((on.get("push") or {}).get("tags") or [])
    if not any(t.startswith("v") for t in tags):
        problems.append(f"not triggered by a version tag (push.tags: {tags})")
    builds = [s for _, s in steps(wf) if str(s.get("uses", "")).startswith("docker/build-push-action@")]
    if len(builds) != 1:
        return problems + [f"{len(builds)} docker/build-push-action steps, want 1"]
    w = builds[0].get("with", {})
    platforms = {p.strip() for p in str(w.get("platforms", "")).split(",")}
    if not {"linux/amd64", "linux/arm64"} <= platforms:
        problems.append(f"platforms {sorted(platforms)}: want linux/amd64 and linux/arm64")
    if w.get("push") is not True:
        problems.append("the image is not pushed")
    if w.get("sbom") is not True:
        problems.append("no SBOM (sbom: true)")
    if str(w.get("provenance")) not in ("True", "true", "mode=max"):
        problems.append(f"provenance {w.get('provenance')!r}: want mode=max (or true)")
    name_steps = [s for _, s in steps(wf) if "ghcr.io/${GITHUB_REPOSITORY,,}" in str(s.get("run", ""))]
    if not name_steps or not all(f"steps.{name_steps[0].get('id')}.outputs.image" in t for t in str(w.get("tags", "")).splitlines() if t.strip()):
        problems.append("the tags are not ghcr.io/<this repository> (lower-cased) from the naming step")
    pin_steps = [s for _, s in steps(wf) if ".env" in str(s.get("run", "")) and all(p in str(s.get("run", "")) for p in PINS)]
    args = dict(line.strip().split("=", 1) for line in str(w.get("build-args", "")).splitlines() if "=" in line)
    if set(args) != set(PINS):
        problems.append(f"build-args {sorted(args)}: want exactly {list(PINS)} (the Dockerfile ARGs compose passes)")
    elif not pin_steps or any(args[p] != f"${{{{ steps.{pin_steps[0].get('id')}.outputs.{p} }}}}" for p in PINS):
        problems.append("build-args are not read from .env (a step that greps the pins into its outputs)")
    overlay = yaml.safe_load(open(OVERLAY))
    names = [i["name"] for i in overlay.get("images", [])]
    set_image = [s for _, s in steps(wf) if "kustomize edit set image" in str(s.get("run", ""))]
    if not set_image:
        problems.append("the production overlay is never pinned to the pushed image")
    else:
        s = set_image[0]
        m = re.search(r'kustomize edit set image "([^=]+)=\$\{IMAGE\}:\$\{TAG\}@\$\{DIGEST\}"', s["run"])
        if not m or m.group(1) not in names:
            problems.append(f"`kustomize edit set image` does not set the overlay's image {names} to <image>:<tag>@<digest>: {s['run'].strip()!r}")
        if s.get("working-directory") != "deploy/k8s/overlays/production":
            problems.append(f"edits {s.get('working-directory')!r}, not deploy/k8s/overlays/production")
        if "steps.push.outputs.digest" not in str(wf["jobs"].get("image", {}).get("outputs", {})):
            problems.append("the digest of the push is not what the overlay gets")
    return problems


def main():
    text = open(WORKFLOW).read()
    wf = yaml.safe_load(text)
    check("release.yml: actionlint finds nothing", actionlint(text))
    check("release.yml: a version tag builds amd64 + arm64, pushes to ghcr.io/<repo> with SBOM and provenance, pins from .env, the overlay pinned to the digest", rules(wf))

    def build(w):
        return next(s for _, s in steps(w) if str(s.get("uses", "")).startswith("docker/build-push-action@"))["with"]
    mutations = [
        ("amd64 only", lambda w: build(w).update(platforms="linux/amd64")),
        ("no SBOM", lambda w: build(w).update(sbom=False)),
        ("no provenance", lambda w: build(w).pop("provenance")),
        ("a pin written in the workflow, not read from .env", lambda w: build(w).update(
            **{"build-args": build(w)["build-args"].replace("${{ steps.pins.outputs.RUST_IMAGE }}", "rust:1.95.0-bookworm")})),
        ("the overlay's image misnamed", lambda w: [s.update(run=s["run"].replace('"jobstack=', '"jobstack-api=')) for _, s in steps(w)
                                                    if "kustomize edit set image" in str(s.get("run", ""))]),
        ("triggered on every push to main", lambda w: (w.get("on") or w[True]).update(push={"branches": ["main"]})),
    ]
    for desc, mutate in mutations:
        w = copy.deepcopy(wf)
        mutate(w)
        caught = rules(w)
        check(f"broken on purpose, caught: {desc}", [] if caught else ["nothing reported"])
    broken = text.replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1)
    check("broken on purpose, caught by actionlint: `runs_on` for `runs-on`", [] if actionlint(broken) else ["actionlint reported nothing"])
    print(f"{'all' if not failed else failed} {'passed' if not failed else 'failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
