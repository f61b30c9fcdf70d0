#!/usr/bin/env bash
# Install what the slow (reliability) tests need from the distribution, only when it is missing:
#   chromium + chromium-driver  (tests/reliability/test_browser.py drives it with Playwright; no browser download)
#   postgresql                  (tests/reliability: a throwaway cluster on 127.0.0.1, started and stopped by the tests)
# Idempotent: a second run installs nothing. Never fatal: a missing package makes the tests that need it
# skip with a clear reason instead of failing CI.
#
#   bash tools/ci_services.sh
set -uo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
    echo "ci_services: chromium, chromium-driver and postgresql already installed"
elif ! command -v apt-get >/dev/null 2>&1; then
    echo "ci_services: no apt-get; missing ${missing[*]} (the tests needing them will be skipped)"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
            echo "ci_services: not root and no sudo; missing ${missing[*]} (the tests needing them will be skipped)"
            exit 0
        fi
    fi
    echo "ci_services: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
            >/tmp/strokect_ci_services.log 2>&1; then
        echo "ci_services: apt-get failed (see /tmp/strokect_ci_services.log); the tests needing ${missing[*]} will be skipped"
        tail -5 /tmp/strokect_ci_services.log
    fi
    # the Debian package starts a system cluster: the tests use their own throwaway cluster instead
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ " ${missing[*]} " == *" postgresql "* ]]; then
        for conf in /etc/postgresql/*/main; do
            [ -d "$conf" ] || continue
            version=$(basename "$(dirname "$conf")")
            $SUDO pg_ctlcluster "$version" main stop >/dev/null 2>&1 || true
        done
    fi
fi

# Python side (normally already installed by `pip install -r requirements-dev.txt`)
python - <<'EOF' || pip install -q "psycopg[binary]>=3.1" "playwright>=1.40" >/dev/null 2>&1 || true
import importlib.util, sys
sys.exit(0 if all(importlib.util.find_spec(m) for m in ("psycopg", "playwright")) else 1)
EOF
echo "ci_services: chromium=$(command -v chromium || echo none)" \
     "initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | tail -1 || echo none)"
exit 0
