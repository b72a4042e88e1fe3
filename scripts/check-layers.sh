#!/usr/bin/env bash
# The pure core (src/protocol, src/model) must not do I/O, read a clock or log (STYLE.md §2, habit 1).
# A name appearing there at all is a failure: the check is deliberately blunt so it cannot be argued with.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern='\btokio\b|std::io\b|std::net\b|std::fs\b|Instant::now|SystemTime::now|std::time|\btracing\b|\blog::|\b(println|eprintln|print|eprint|dbg)!'
if hits=$(grep -rnE "$pattern" src/protocol src/model); then
  echo "the pure core names I/O, a clock or logging:" >&2
  echo "$hits" >&2
  exit 1
fi
echo "layering ok: src/protocol and src/model name no I/O, clock or logging"
