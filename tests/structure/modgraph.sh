#!/usr/bin/env bash
# Top-level module dependency graph of a crate: for each top-level module, the other
# top-level modules it names with `crate::x` or `use crate::{x, ...}` (comments excluded;
# names that are not modules, such as re-exported items, are dropped).
# Usage: tests/structure/modgraph.sh crates/sluice-pg/src
src=$1
mods=$(ls "$src" | sed -E 's/\.rs$//' | grep -v '^lib$\|^main$\|_tests$')
for m in $mods; do
  files=$( [ -d "$src/$m" ] && find "$src/$m" -name '*.rs' || echo "$src/$m.rs")
  deps=$(cat $files | grep -v '^\s*//' | perl -0777 -ne '
      while (/crate::\{([^}]*)\}/g) { print "$_\n" for map { /^\s*([a-z_]+)/ ? $1 : () } split /,/, $1 }
      while (/crate::([a-z_]+)/g) { print "$1\n" }' |
    sort -u | grep -vx "$m" | grep -xF -f <(echo "$mods") | tr '\n' ' ')
  echo "$m -> $deps"
done
