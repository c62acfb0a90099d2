#!/usr/bin/env bash
# The Debian packages the tests use: Prometheus (a real scrape of `funnelhouse run`), its
# Pushgateway (what an --available-now run pushes) and Chromium (the dashboard rendered
# headless). A no-op when both are installed; otherwise
# installs them with apt-get (as root, or through sudo).
# Usage: scripts/debian-packages.sh
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v chromium >/dev/null || need+=(chromium)
[[ ${#need[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo)
else
    echo "missing Debian packages: ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
    exit 1
fi
echo "installing ${need[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
