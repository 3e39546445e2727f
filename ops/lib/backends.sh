# shellcheck shell=bash
# Sourced by ops/test after bootstrap.sh (uses log and apt_install).
# ensure_backends: make Redis and RabbitMQ reachable, starting local ones if
# needed, and Chromium installed for the browser tests. Never fails: it exports
# KADAI_MISSING_BACKENDS so the test suite can decide (fail under CI, skip
# loudly otherwise).

# _hostport URL DEFAULT_PORT -> "host port". Handles scheme://user:pass@host:port/path
# and [ipv6]:port. Credentials are dropped here so they can never be printed; we
# cut at the LAST '@' first so an unencoded '/' in a password cannot leak.
_hostport() {
  local rest=${1#*://} host port=""
  rest=${rest##*@}
  rest=${rest%%[/?#]*}
  if [[ $rest == \[* ]]; then
    host=${rest%%]*}; host=${host#[}; port=${rest#*]}; port=${port#:}
  elif [[ $rest == *:* ]]; then
    host=${rest%:*}; port=${rest##*:}
  else
    host=$rest
  fi
  echo "${host:-127.0.0.1} ${port:-$2}"
}

_is_local() { [[ $1 == localhost || $1 == 127.* || $1 == ::1 ]]; }

# One bounded TCP connect; bash's /dev/tcp needs no extra tools.
# shellcheck disable=SC2016  # $0/$1 expand in the child bash, on purpose
_tcp_ok() { timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# A broker is usable once it answers the AMQP 0-9-1 protocol header with a
# method frame (first byte 1). Unlike `rabbitmq-diagnostics ping` this needs no
# root/erlang cookie and also works for remote brokers.
# shellcheck disable=SC2016  # as above
_amqp_ok() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "AMQP\x00\x00\x09\x01" >&3
    [[ $(head -c1 <&3 | od -An -tu1 | tr -d " ") == 1 ]]' "$1" "$2" 2>/dev/null
}

_ready() {  # NAME HOST PORT
  _tcp_ok "$2" "$3" || return 1
  [[ $1 != rabbitmq ]] || _amqp_ok "$2" "$3"
}

_start() {  # NAME HOST PORT LOGFILE; daemons get their own log so no CI pipe stays open
  local bind=127.0.0.1
  [[ $2 == ::1 ]] && bind=::1
  case $1 in
    redis) redis-server --daemonize yes --bind "$bind" --port "$3" --save "" --appendonly no \
             --dir "${TMPDIR:-/tmp}" </dev/null >"$4" 2>&1 ;;
    rabbitmq) RABBITMQ_NODE_PORT=$3 rabbitmq-server -detached </dev/null >"$4" 2>&1 ;;
  esac
}

# _ensure NAME URL_VAR DEFAULT_PORT SERVER_BIN APT_PKG WAIT_SECONDS
_ensure() {
  local name=$1 var=$2 bin=$4 pkg=$5 wait=$6 host port
  read -r host port < <(_hostport "${!var}" "$3")
  local logf="${TMPDIR:-/tmp}/kadai-$name-$port.log"
  _BACKEND_STATUS+="$name: "

  if ! _ready "$name" "$host" "$port" && _is_local "$host"; then
    command -v "$bin" >/dev/null || apt_install "$pkg" || true
    # Installing may auto-start the service (systemd); only start if nothing listens.
    if command -v "$bin" >/dev/null && ! _tcp_ok "$host" "$port"; then
      log "starting $name on $host:$port (log: $logf)"
      _start "$name" "$host" "$port" "$logf" || true
    fi
    # Wait only if something can still come up (we started it, or it is booting).
    if command -v "$bin" >/dev/null || _tcp_ok "$host" "$port"; then
      local deadline=$((SECONDS + wait))
      until _ready "$name" "$host" "$port" || ((SECONDS >= deadline)); do sleep 0.5; done
    fi
  fi

  if _ready "$name" "$host" "$port"; then
    _BACKEND_STATUS+="ok ($host:$port)  "
    return
  fi
  _BACKEND_STATUS+="MISSING ($host:$port)  "
  KADAI_MISSING_BACKENDS="${KADAI_MISSING_BACKENDS:+$KADAI_MISSING_BACKENDS }$name"
  log "=================================================================="
  log "$name is NOT reachable at $host:$port (from $var)"
  if _is_local "$host"; then
    log "  install: sudo apt-get install -y $pkg"
    if [[ $name == redis ]]; then
      log "  start:   redis-server --daemonize yes --bind 127.0.0.1 --port $port --save '' --appendonly no"
    else
      log "  start:   sudo rabbitmq-server -detached   (or: sudo systemctl start rabbitmq-server)"
    fi
    [[ -s $logf ]] && log "  last start attempt logged to $logf"
  else
    log "  remote target: ops/test only probes it. Check host/firewall, or point $var at a local server."
  fi
  log "  tests needing $name will FAIL under CI and be SKIPPED otherwise"
  log "=================================================================="
}

# ensure_chromium: the browser tests (marker `browser`) drive Debian's chromium
# through Playwright; Playwright's own browser downloads are never used. The
# default path is installed with apt-get as root; a CHROMIUM_PATH pointing
# elsewhere is only checked.
ensure_chromium() {
  : "${CHROMIUM_PATH:=/usr/bin/chromium}"
  export CHROMIUM_PATH
  _BACKEND_STATUS+="chromium: "
  if [[ ! -x $CHROMIUM_PATH && $CHROMIUM_PATH == /usr/bin/chromium ]]; then
    apt_install chromium || true
  fi
  if [[ -x $CHROMIUM_PATH ]]; then
    _BACKEND_STATUS+="ok ($CHROMIUM_PATH)  "
    return
  fi
  _BACKEND_STATUS+="MISSING ($CHROMIUM_PATH)  "
  KADAI_MISSING_BACKENDS="${KADAI_MISSING_BACKENDS:+$KADAI_MISSING_BACKENDS }chromium"
  log "=================================================================="
  log "chromium is NOT installed at $CHROMIUM_PATH (from CHROMIUM_PATH)"
  log "  install: sudo apt-get install -y chromium   (or point CHROMIUM_PATH at a Chromium)"
  log "  tests needing chromium (marker browser) will FAIL under CI and be SKIPPED otherwise"
  log "=================================================================="
}

# ensure_promtool: the deployment tests check ops/prometheus with promtool, which
# Debian ships in the prometheus package (installed as root; the package's
# service is not needed and policy-rc.d or the lack of an init keeps it down).
ensure_promtool() {
  _BACKEND_STATUS+="promtool: "
  if ! command -v promtool >/dev/null; then
    apt_install prometheus || true
  fi
  if command -v promtool >/dev/null; then
    _BACKEND_STATUS+="ok  "
    return
  fi
  _BACKEND_STATUS+="MISSING  "
  KADAI_MISSING_BACKENDS="${KADAI_MISSING_BACKENDS:+$KADAI_MISSING_BACKENDS }promtool"
  log "promtool is NOT installed (sudo apt-get install prometheus): tests/ops/test_promtool.py will FAIL under CI and be SKIPPED otherwise"
}

# ensure_tools: curl and jq, which the README's curl walk-through uses (its test runs it as written).
ensure_tools() {
  local tool missing=()
  for tool in curl jq; do
    command -v "$tool" >/dev/null || apt_install "$tool" || true
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  _BACKEND_STATUS+="curl+jq: "
  if ((${#missing[@]} == 0)); then
    _BACKEND_STATUS+="ok  "
    return
  fi
  _BACKEND_STATUS+="MISSING  "
  KADAI_MISSING_BACKENDS="${KADAI_MISSING_BACKENDS:+$KADAI_MISSING_BACKENDS }${missing[*]}"
  log "${missing[*]} NOT installed (sudo apt-get install ${missing[*]}): the README walk-through test will FAIL under CI and be SKIPPED otherwise"
}

ensure_backends() {
  : "${REDIS_URL:=redis://127.0.0.1:6379/0}" "${AMQP_URL:=amqp://guest:guest@127.0.0.1:5672/}"
  export REDIS_URL AMQP_URL KADAI_MISSING_BACKENDS=""
  _BACKEND_STATUS=""
  _ensure redis REDIS_URL 6379 redis-server redis-server 10
  _ensure rabbitmq AMQP_URL 5672 rabbitmq-server rabbitmq-server 60
  ensure_chromium
  ensure_promtool
  ensure_tools
  log "${_BACKEND_STATUS%  }"
}
