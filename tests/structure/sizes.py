#!/usr/bin/env python3
"""List Rust functions longer than N lines (default 60) and non-test files over 450 lines
(issue 13: the size limits a newcomer can read).
Usage: tests/structure/sizes.py [N] paths...  (skips files named *tests*.rs and `mod tests` blocks roughly)"""
import re, sys, os
n = 60
args = sys.argv[1:]
if args and args[0].isdigit():
    n = int(args.pop(0))
files = []
for a in args:
    if os.path.isdir(a):
        for root, _, fs in os.walk(a):
            if '/target' in root: continue
            files += [os.path.join(root, f) for f in fs if f.endswith('.rs')]
    else:
        files.append(a)
fnre = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)')
for path in sorted(files):
    if 'test' in os.path.basename(path) or '/fuzz' in path: continue
    lines = open(path).read().split('\n')
    # cut at #[cfg(test)] mod
    end = len(lines)
    for i, l in enumerate(lines):
        if l.startswith('#[cfg(test)]') and i + 1 < len(lines) and re.match(r'mod \w+', lines[i+1]):
            end = i; break
    if end > 450:
        print(f"FILE {path}: {end} lines")
    i = 0
    while i < end:
        m = fnre.match(lines[i])
        if m:
            depth = 0; started = False; j = i
            while j < end:
                s = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j])
                s = re.sub(r"'(\\.|[^'\\])'", "''", s)
                s = s.split('//')[0]
                if not started and ';' in s and '{' not in s:
                    break
                depth += s.count('{') - s.count('}')
                if '{' in s: started = True
                if started and depth <= 0: break
                j += 1
            if started and j - i + 1 > n:
                print(f"FN {path}:{i+1} {m.group(6)} {j-i+1} lines")
        i += 1
