#!/usr/bin/env bash
# Checks every manifest here against the Kubernetes API schemas, strictly
# (an unknown field fails), with PyPI's kubernetes-validate at the versions
# pinned in requirements.txt, installed in a virtualenv of its own.
# Usage: deploy/kubernetes/validate.sh [KUBERNETES_VERSION]   (default 1.34.0)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="${1:-1.34.0}"
venv="${KUBERNETES_VALIDATE_VENV:-$here/../../target/kubernetes-validate}"
if ! "$venv/bin/pip" freeze 2>/dev/null | cmp -s - "$here/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
fi
"$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "$here"/*.yaml
echo "kubernetes manifests: $(ls "$here"/*.yaml | wc -l) files valid against Kubernetes $version"
