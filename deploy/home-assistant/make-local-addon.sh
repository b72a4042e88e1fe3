#!/usr/bin/env bash
# Assembles a self-contained local Home Assistant add-on folder: the Supervisor builds an add-on with its own
# folder as the Docker context, so the manifest, Dockerfile and docs go to the top of DEST and the sources to the
# same paths the Dockerfile copies from the repository root.
#   deploy/home-assistant/make-local-addon.sh /path/to/the/addons/share/bms_exporter
set -euo pipefail

if (($# != 1)); then
  echo "usage: $0 DEST   (e.g. the Samba share's addons/bms_exporter)" >&2
  exit 2
fi
dest=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

mkdir -p "$dest"
# A fresh copy each time, so files removed from the sources do not linger in the build.
rm -rf "$dest/src" "$dest/benches" "$dest/deploy"
cp "$here/config.yaml" "$here/Dockerfile" "$here/DOCS.md" "$dest/"
cp "$root/Cargo.toml" "$root/Cargo.lock" "$dest/"
cp -R "$root/src" "$root/benches" "$dest/"
mkdir -p "$dest/deploy/home-assistant"
cp -p "$here/run.sh" "$dest/deploy/home-assistant/run.sh"
echo "$dest: local add-on ready; in Home Assistant: Settings → Add-ons → Add-on store → ⋮ → Check for updates"
