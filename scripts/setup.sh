#!/usr/bin/env bash
# Prepare a fresh Debian-like machine: system packages, then .venv with
# nexusd and its test tools. Idempotent; does nothing when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=(libsystemd-dev libgirepository1.0-dev libcairo2-dev pkg-config
          dbus-daemon rpm rpmlint systemd
          python3-pip python3-setuptools python3-wheel)
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" \
        >/dev/null
fi

stamp=.venv/.nexusd-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
    exit 0
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[system,test]'
echo "$want" > "$stamp"
