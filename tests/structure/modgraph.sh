#!/usr/bin/env bash
# Top-level module dependency graph of a crate: for each top-level module, the other
# top-level modules it names with `crate::` (comments and tests excluded).
# Usage: tests/structure/modgraph.sh crates/sluice-pg/src
src=$1
for m in $(ls "$src" | sed -E 's/\.rs$//' | grep -v '^lib$\|^main$\|_tests$'); do
  files=$( [ -d "$src/$m" ] && find "$src/$m" -name '*.rs' || echo "$src/$m.rs")
  deps=$(cat $files | grep -v '^\s*//' | grep -o 'crate::[a-z_]*' | sed 's/crate:://' | grep -v "^$m$" | sort -u | tr '\n' ' ')
  echo "$m -> $deps"
done
