#!/usr/bin/env bash
# The test command (README; .ci/run calls it): a venv with the test and zoo extras, then the
# fast suite and the model-zoo stage. pytest's exit code 5 ("no tests ran") counts as failure.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${GRAPHPRUNE_VENV:-.venv}
set -e
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test,zoo]'
set +e

# tests/test_html_report.py renders the HTML report in headless Chromium and skips without
# it; CI runs as root on Debian, so install it there (quietly) instead of skipping.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    echo "=== installing chromium (Debian package) for the HTML report screenshot test"
    if ! (export DEBIAN_FRONTEND=noninteractive
          $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium) >/dev/null 2>&1
    then
        echo "chromium could not be installed; the screenshot test will be skipped"
    fi
fi

stage() {
    local name=$1; shift
    echo "=== $name"
    local start=$SECONDS
    "$VENV/bin/python" -m pytest "$@"
    local rc=$?
    echo "=== $name: exit $rc in $((SECONDS - start)) s"
    if [ "$rc" -eq 5 ]; then echo "no tests ran in stage '$name': failing"; return 1; fi
    return "$rc"
}

export GRAPHPRUNE_REQUIRE_ZOO=1  # the zoo stage fails, not skips, on a missing package
export GRAPHPRUNE_REQUIRE_KERNELS=1  # and the kernel tests on a library that does not build
stage "fast suite" -m "not zoo" -q || exit 1
stage "model zoo (exports are cached in ${GRAPHPRUNE_ZOO_CACHE:-~/.cache/graphprune/zoo})" \
    -m zoo -q || exit 1
