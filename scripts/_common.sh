# Shared steps of scripts/run and scripts/test (sourced, not run).
# Creates .venv with Python 3.11+, installs the project with the extras in $EXTRAS, and makes sure
# Redis (and for tests PostgreSQL) answer, starting or installing them where that is allowed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\033[1;35m==>\033[0m %s\n' "$*"; }
can_sudo() { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
APT_UPDATED=0
apt_install() {
  if ! command -v apt-get >/dev/null || ! can_sudo || [ "${TUNESMITH_NO_APT:-0}" = 1 ]; then
    echo "Missing: $*. Install it with: sudo apt-get install -y $*" >&2
    return 1
  fi
  [ "$APT_UPDATED" = 1 ] || { as_root apt-get update -qq >/dev/null; APT_UPDATED=1; }
  say "installing $* with apt"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "Tunesmith needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv 2>/dev/null || { apt_install python3-venv && rm -rf .venv && "$PY" -m venv .venv; }
fi
STAMP=".venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)-${EXTRAS:-none}"
if [ ! -f "$STAMP" ]; then
  say "installing Python packages (${EXTRAS:-web and offline worker})"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
  touch "$STAMP"
fi

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
redis_up() { .venv/bin/python -c "import redis,sys; redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()" "$1" 2>/dev/null; }
ensure_redis() {
  local url=$1
  redis_up "$url" && return 0
  case "$url" in redis://127.0.0.1*|redis://localhost*) ;; *) echo "Redis at $url does not answer." >&2; return 1;; esac
  command -v redis-server >/dev/null || apt_install redis-server || return 1
  say "starting redis-server on 127.0.0.1:6379"
  mkdir -p var
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir "$PWD/var" --logfile "$PWD/var/redis.log"
  for _ in $(seq 50); do redis_up "$url" && return 0; sleep 0.1; done
  echo "redis-server did not start; see var/redis.log" >&2; return 1
}
