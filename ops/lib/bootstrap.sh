# shellcheck shell=bash
# Sourced by ops/run and ops/test. Defines log/die/apt_install and `bootstrap`,
# which leaves the caller in the repo root with an up-to-date .venv.

KADAI_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KADAI_VENV="$KADAI_ROOT/.venv"
KADAI_STAMP="$KADAI_VENV/.kadai-installed"

log() { printf '[kadai] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# apt_install PKG...: only as root on apt systems; `apt-get update` runs once per
# invocation because fresh images ship without package lists.
apt_install() {
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null || return 1
  if [[ -z ${_KADAI_APT_UPDATED:-} ]]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || return 1
    _KADAI_APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# A venv counts as usable only if it has pip: on Debian a failed `venv` (no
# ensurepip) leaves a half-made .venv with a python but no pip.
_venv_ok() {
  "$KADAI_VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

_make_venv() {
  local out
  out="$("$1" -m venv --clear "$KADAI_VENV" 2>&1)" && return 0
  # Debian/Ubuntu split venv/ensurepip into python3.X-venv; python3-venv only
  # matches the distro's default python3, so prefer the versioned package.
  local pkg
  pkg="python$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
  if apt_install "$pkg" || apt_install python3-venv; then
    out="$("$1" -m venv --clear "$KADAI_VENV" 2>&1)" && return 0
  fi
  printf '%s\n' "$out" >&2
  die "could not create .venv with '$1 -m venv'. On Debian/Ubuntu install $pkg (or python3-venv): sudo apt-get install $pkg"
}

bootstrap() {
  cd "$KADAI_ROOT" || die "cannot cd to $KADAI_ROOT"
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || die "'$py' not found. Install Python 3.11+ or set PYTHON=/path/to/python3.11"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$py is $("$py" -V 2>&1); Kadai needs Python >= 3.11 (set PYTHON=python3.11 or newer)"

  if ! _venv_ok; then
    log "creating .venv with $("$py" -V 2>&1)"
    _make_venv "$py"
  fi

  # Reinstall only when packaging metadata changed (or the CLI is gone): a
  # no-op pip run still costs seconds and needs the network.
  local want have=""
  want="$(cat setup.cfg pyproject.toml 2>/dev/null | "$KADAI_VENV/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
  [[ -f $KADAI_STAMP ]] && have="$(<"$KADAI_STAMP")"
  if [[ $want != "$have" || ! -x $KADAI_VENV/bin/kadai ]]; then
    log "installing project into .venv (pip install -e '.[dev]')"
    "$KADAI_VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]' \
      || die "pip install failed (see errors above)"
    printf '%s\n' "$want" >"$KADAI_STAMP"
  fi
}
