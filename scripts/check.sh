#!/usr/bin/env bash
# Style checks CI enforces beyond the tests: ruff, marker form, module size.
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=()
for d in nexusd tests bench reliability; do [[ -d $d ]] && dirs+=("$d"); done
.venv/bin/ruff check --quiet "${dirs[@]}"
.venv/bin/ruff format --check --quiet "${dirs[@]}"

bad_marks=$(grep -rnE '\b(TODO|FIXME|XXX|HACK)\b' --include='*.py' "${dirs[@]}" \
    | grep -vE 'TODO\([^)]+\): .+ because |XXX: .+; .+; accepted because ' \
    || true)
if [[ -n $bad_marks ]]; then
    echo "markers without the agreed form:" >&2
    echo "$bad_marks" >&2
    exit 1
fi

big=$(find "${dirs[@]}" -name '*.py' -print0 | xargs -0 wc -l \
    | awk '$2 != "total" && $1 > 1000 {print $2 " (" $1 " lines)"}')
if [[ -n $big ]]; then
    echo "modules over the 1000-line cap:" >&2
    echo "$big" >&2
    exit 1
fi

.venv/bin/mypy
