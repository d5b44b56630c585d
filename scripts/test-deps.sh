#!/usr/bin/env bash
# What the tests need besides PostgreSQL: for the example bridges' tests and
# scripts/bench-broker.sh, the brokers (Debian's nats-server and rabbitmq-server; no service is
# started by installing them: the tests run private ones) and a Python virtual environment
# with the bridges' pinned clients (examples/bridges/requirements.txt) in target/bridges-venv;
# for the tests of the generated man page and completions, man, groff, zsh and fish.
#
#   scripts/test-deps.sh        # once on a fresh machine, as root (run by .ci/run)
#
# Missing packages are installed when run as root (scripts/lib/deps.sh), otherwise the one
# command to run is printed. The venv is made again only when requirements.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/deps.sh
source scripts/lib/deps.sh

ensure_packages nats-server rabbitmq-server python-venv man groff zsh fish

venv=target/bridges-venv
requirements=examples/bridges/requirements.txt
if [[ -x $venv/bin/python ]] && cmp -s "$requirements" "$venv/requirements.txt"; then
    echo "bridges venv up to date: $venv"
    exit 0
fi
rm -rf "$venv"
mkdir -p target
"$(system_python)" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
# Last: only a complete install is recorded as up to date.
cp "$requirements" "$venv/requirements.txt"
echo "bridges venv ready: $venv ($("$venv/bin/python" --version);" \
    "$(grep -v '^#' "$requirements" | tr '\n' ' '| sed 's/ $//'))"
