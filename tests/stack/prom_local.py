#!/usr/bin/env python3
"""observability/prometheus/prometheus.yml as the Prometheus that installs here can load it.

The pinned Prometheus (v3.14.0) reads keys that Debian's 2.42 (what `apt-get install prometheus`
brings here) rejects. Those keys, and only those, are dropped from the copy that promtool checks
and that the local Prometheus runs; each was read in the upstream source at the pinned tag
(observability/images.yml, PROMETHEUS_IMAGE). On a Prometheus 3 nothing is dropped.

    prom_local.py OUT   writes the copy to OUT (rule files made absolute) and prints what it dropped
"""
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(ROOT, "observability", "prometheus", "prometheus.yml")
# (key path, the version that reads it): the config file's retention replaced the deprecated flag.
NEWER_KEYS = [(("storage", "tsdb", "retention"), 3)]


def local_major():
    out = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.", out)
    return int(m.group(1)) if m else 0


def config_for_local(major=None):
    """(config, [dropped key paths]) for the local Prometheus; rule_files made absolute."""
    major = local_major() if major is None else major
    cfg = yaml.safe_load(open(CONFIG))
    dropped = []
    for path, since in NEWER_KEYS:
        parent = cfg
        for k in path[:-1]:
            parent = parent.get(k) or {}
        if major < since and path[-1] in parent:
            del parent[path[-1]]
            dropped.append(".".join(path))
    cfg["rule_files"] = [os.path.join(os.path.dirname(CONFIG), r) for r in cfg.get("rule_files", [])]
    return cfg, dropped


if __name__ == "__main__":
    cfg, dropped = config_for_local()
    yaml.safe_dump(cfg, open(sys.argv[1], "w"), sort_keys=False)
    print(f"# dropped for the local Prometheus {local_major()}.x: {dropped or 'nothing'}")
