#!/usr/bin/env bash
# Builds the wssd image with podman or docker (whichever has a working engine), from the
# repository root: deploy/container/build.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/../.."
tag="${1:-wssd:latest}"
for engine in podman docker; do
    if command -v "$engine" >/dev/null 2>&1 && "$engine" info >/dev/null 2>&1; then
        # podman keeps HEALTHCHECK only in the docker image format.
        format=(); [ "$engine" = podman ] && format=(--format docker)
        exec "$engine" build "${format[@]}" -f deploy/container/Containerfile -t "$tag" .
    fi
done
echo "build.sh: no working container engine (podman or docker with a running daemon)" >&2
exit 1
