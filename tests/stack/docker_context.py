#!/usr/bin/env python3
"""Copy the Docker build context, as .dockerignore filters it, into DEST.

Then run.sh builds the three binaries from that copy with `--locked`, as the Dockerfile does:
a file the build needs but .dockerignore drops, or a stale Cargo.lock, fails there and not first
on a user's laptop. Patterns follow Docker's rules for what we use: Go filepath.Match per path
segment, `**` for any number of segments, `!` to re-include, last match wins.
"""
import fnmatch
import os
import shutil
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def patterns():
    out = []
    for line in open(os.path.join(ROOT, ".dockerignore")):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        out.append((neg, line.lstrip("!").strip("/").split("/")))
    return out


def match(pat, parts):
    if not pat:
        return not parts
    if pat[0] == "**":
        return any(match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and match(pat[1:], parts[1:])


def ignored(rel, pats):
    parts = rel.split("/")
    result = False
    for neg, pat in pats:
        # a pattern that matches a directory excludes everything below it
        if any(match(pat, parts[:i]) for i in range(1, len(parts) + 1)):
            result = not neg
    return result


def main(dest):
    pats = patterns()
    n = 0
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel_dir = os.path.relpath(dirpath, ROOT)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if not ignored(f"{rel_dir}/{d}".lstrip("/"), pats)]
        for f in filenames:
            rel = f"{rel_dir}/{f}".lstrip("/")
            if not ignored(rel, pats):
                os.makedirs(os.path.join(dest, rel_dir), exist_ok=True)
                shutil.copy2(os.path.join(ROOT, rel), os.path.join(dest, rel))
                n += 1
    print(f"# build context: {n} files")


if __name__ == "__main__":
    main(sys.argv[1])
