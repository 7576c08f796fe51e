"""Counts and differences of pytest junit XML files (pymongo.sh's summary).

Usage: junit_diff.py OUT_DIR TARGET... reads OUT_DIR/junit-TARGET.xml for every target,
prints a markdown table of passed / failed / error / skipped per target and, for every
target but the first (the direct run), each test whose result differs from the first's.
Exits 1 when any test differs.
"""

import os
import sys
import xml.etree.ElementTree as ET

KINDS = {"failure": "failed", "error": "error", "skipped": "skipped"}
COLS = ["passed", "failed", "error", "skipped"]


def results(path):
    """{test id: (status, first line of the message)} of one junit file ({} if none)."""
    res = {}
    if not os.path.exists(path):
        return res
    for tc in ET.parse(path).getroot().iter("testcase"):
        tid = f"{tc.get('classname')}::{tc.get('name')}"
        status, msg = "passed", ""
        for child in tc:
            if child.tag in KINDS:
                status = KINDS[child.tag]
                lines = (child.get("message") or "").strip().splitlines()
                msg = lines[0][:160] if lines else ""
                if status in ("failed", "error"):
                    break
        res[tid] = (status, msg)
    return res


def main():
    out, targets = sys.argv[1], sys.argv[2:]
    res = {t: results(os.path.join(out, f"junit-{t}.xml")) for t in targets}
    print()
    print(f"| target | {' | '.join(COLS)} | total |")
    print("|---|" + "---:|" * (len(COLS) + 1))
    for t in targets:
        counts = [sum(1 for s, _ in res[t].values() if s == c) for c in COLS]
        note = "" if res[t] else " (no junit: run did not finish)"
        print(f"| {t}{note} | {' | '.join(map(str, counts))} | {len(res[t])} |")
    base = res[targets[0]] if targets else {}
    ndiff = 0
    for t in targets[1:]:
        if not base:
            break
        diffs = []
        for tid in sorted(set(base) | set(res[t])):
            b = base.get(tid, ("missing", ""))[0]
            s, msg = res[t].get(tid, ("missing", ""))
            if b != s:
                diffs.append((tid, b, s, msg))
        ndiff += len(diffs)
        print(f"\n### {t}: {len(diffs)} test(s) differ from {targets[0]}")
        for tid, b, s, msg in diffs:
            print(f"- {tid}: {targets[0]} {b} -> {t} {s}" + (f" — {msg}" if msg else ""))
    return 1 if ndiff else 0


if __name__ == "__main__":
    sys.exit(main())
