#!/usr/bin/env bash
# The pure core must not do I/O, read a clock or log (ARCHITECTURE.md#layers). A name appearing there at all is a
# failure: the check is deliberately blunt so it cannot be argued with.
# - src/protocol, src/model: not even time types (nothing there needs them).
# - src/session.rs, src/output/nagios.rs: may name `std::time` types (time is an input), never read a clock.
set -euo pipefail
cd "$(dirname "$0")/.."
io='\btokio\b|std::io\b|std::net\b|std::fs\b|Instant::now|SystemTime::now|\btracing\b|\blog::|\b(println|eprintln|print|eprint|dbg)!'
status=0
if hits=$(grep -rnE "$io|std::time" src/protocol src/model); then
  echo "the pure core (protocol, model) names I/O, a clock or logging:" >&2
  echo "$hits" >&2
  status=1
fi
if hits=$(grep -nE "$io" src/session.rs src/output/nagios.rs); then
  echo "the pure session or Nagios formatter names I/O, a clock read or logging:" >&2
  echo "$hits" >&2
  status=1
fi
[ "$status" = 0 ] && echo "layering ok: protocol, model, session and the Nagios formatter do no I/O, clock reads or logging"
exit "$status"
