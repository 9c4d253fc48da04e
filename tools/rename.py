#!/usr/bin/env python3
"""Renames the project: every `jobstack` in file contents and paths under DIR becomes NAME.

`python3 tools/rename.py acme_jobs [DIR]` (what tools/fork.py runs once its edits are done).
NAME is used as given in snake case (`acme_jobs`: valid in metric names, SQL identifiers, AMQP
names and compose project names alike), `Jobstack` becomes its PascalCase (`AcmeJobs`, alert
names) and `JOBSTACK` its upper case (`ACME_JOBS`, variables). Binary files, `.git` and
`target/` are left alone. Prints what it changed; exits 1 if anything still names the project.
"""
import os
import re
import sys

SKIP_DIRS = {".git", "target", "node_modules"}
OLD = re.compile(r"jobstack", re.IGNORECASE)


def forms(name):
    words = name.split("_")
    return {"lower": name, "pascal": "".join(w[:1].upper() + w[1:] for w in words), "upper": name.upper()}


def replace(text, f):
    def sub(m):
        s = m.group(0)
        if s.isupper():
            return f["upper"]
        if s[0].isupper():
            return f["pascal"]
        return f["lower"]
    return OLD.subn(sub, text)


def files(root):
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for n in names:
            yield os.path.join(d, n)


def main():
    if len(sys.argv) not in (2, 3) or not re.fullmatch(r"[a-z][a-z0-9_]*", sys.argv[1]):
        sys.exit("usage: rename.py NAME [DIR]   (NAME in snake case, e.g. acme_jobs)")
    name, root = sys.argv[1], os.path.abspath(sys.argv[2] if len(sys.argv) == 3 else ".")
    f = forms(name)
    changed = 0
    for path in list(files(root)):
        with open(path, "rb") as fh:
            data = fh.read()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        new, n = replace(text, f)
        if n:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                fh.write(new)
            changed += n
    # Paths, deepest first so that a renamed folder does not hide its files.
    renamed = 0
    for d, dirs, names in sorted(os.walk(root), key=lambda w: -w[0].count(os.sep)):
        if any(part in SKIP_DIRS for part in os.path.relpath(d, root).split(os.sep)):
            continue
        for n in names + dirs:
            new_name, k = replace(n, f)
            if k:
                os.rename(os.path.join(d, n), os.path.join(d, new_name))
                renamed += 1
    left = [p for p in files(root) if OLD.search(os.path.relpath(p, root))]
    for p in files(root):
        try:
            if OLD.search(open(p, encoding="utf-8").read()):
                left.append(p)
        except (UnicodeDecodeError, OSError):
            pass
    print(f"rename: {changed} occurrences in files and {renamed} paths now say {f['lower']} / {f['pascal']} / {f['upper']}")
    if left:
        print("rename: still naming the project:", *sorted(set(left)), sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
