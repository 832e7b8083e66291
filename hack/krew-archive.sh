#!/usr/bin/env bash
# Build the krew archive for `kubectl runs` (a shim around the jobtree package) and print its sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/kubectl-runs" <<'SHIM'
#!/bin/sh
# kubectl runs → the jobtree CLI (pip install jobtree)
exec python3 -c 'import sys; sys.argv[0] = "kubectl-runs"; from cli.main import run; run()' "$@"
SHIM
chmod +x "$work/kubectl-runs"
if [ -f LICENSE ]; then cp LICENSE "$work/LICENSE"; else echo "Apache-2.0" > "$work/LICENSE"; fi
mkdir -p "$out"
tar -C "$work" -czf "$out/kubectl-runs.tar.gz" kubectl-runs LICENSE
sha256sum "$out/kubectl-runs.tar.gz"
