#!/usr/bin/env bash
# Makes the README's screenshots from a real run of the demo: the console in tmux, its screen
# captured with colours (`tmux capture-pane -e`), turned into HTML (`aha`) and photographed by a
# headless Chromium. Everything comes from Debian packages:
#
#   apt-get install tmux aha chromium-headless-shell fonts-dejavu-core
#
# Run from the repository's root: bash assets/make-screenshots.sh
# It writes assets/console-overview.png and assets/console-deploy.png (and the .ansi captures
# beside them, which stay readable as text).
set -euo pipefail

cd "$(dirname "$0")/.."
COLS=140
ROWS=42
work="$(mktemp -d)"
socket="wavedeck-shots-$$"
trap 'tmux -L "$socket" kill-server 2>/dev/null || true; rm -rf "$work"' EXIT

for tool in tmux aha; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install $tool)" >&2; exit 1; }
done
chrome=""
for candidate in chromium-headless-shell chromium /usr/lib/chromium/chromium-headless-shell /usr/lib/chromium/headless_shell; do
  if command -v "$candidate" >/dev/null 2>&1; then chrome="$(command -v "$candidate")"; break; fi
done
[ -n "$chrome" ] || { echo "needs chromium-headless-shell (apt-get install chromium-headless-shell)" >&2; exit 1; }

cargo build --release --quiet
bin="$PWD/target/release/wavedeck"

tmux -L "$socket" -f /dev/null new-session -d -x "$COLS" -y "$ROWS" \
  "cd '$PWD' && USER=oncall WAVEDECK_AUDIT_DIR='$work/audit' WAVEDECK_LOCAL_ROOT='$work/hosts' \
   WAVEDECK_RUNTIME_DIR='$work/run' '$bin' profiles; sleep 600"

screen() { tmux -L "$socket" capture-pane -p -t 0; }
wait_for() {
  for _ in $(seq 1 300); do
    screen | grep -qF -- "$1" && return 0
    sleep 0.1
  done
  echo "\"$1\" did not appear; the screen was:" >&2
  screen >&2
  exit 1
}
keys() { tmux -L "$socket" send-keys -t 0 "$@"; }

# The terminal's 16 colours, as a dark terminal shows them (aha names them by class; colour 0,
# black, is its "dimgray"), so black text on the selection bar stays black.
PALETTE='
body{margin:0;background:#0d1117}
pre{margin:12px;font:15px/1.2 "DejaVu Sans Mono",monospace;color:#c9d1d9}
.bold{font-weight:bold}
.dimgray{color:#0d1117}.red{color:#f85149}.green{color:#3fb950}.yellow{color:#d29922}
.blue{color:#58a6ff}.purple{color:#bc8cff}.cyan{color:#39c5cf}.white{color:#c9d1d9}
.highlighted.dimgray{color:#6e7681}.highlighted.red{color:#ff7b72}.highlighted.green{color:#56d364}
.highlighted.yellow{color:#e3b341}.highlighted.blue{color:#79c0ff}.highlighted.purple{color:#d2a8ff}
.highlighted.cyan{color:#56d4dd}.highlighted.white{color:#f0f6fc}
.bg-black{background:#0d1117}.bg-red{background:#f85149}.bg-green{background:#3fb950}
.bg-yellow{background:#d29922}.bg-blue{background:#58a6ff}.bg-purple{background:#bc8cff}
.bg-cyan{background:#39c5cf}.bg-white{background:#c9d1d9}.highlighted.bg-black{background:#6e7681}
'

# The HTML around a capture, in a monospace font that has the box-drawing characters.
photograph() {
  local name="$1"
  tmux -L "$socket" capture-pane -e -p -t 0 > "assets/$name.ansi"
  {
    printf '<!doctype html><meta charset="utf-8"><style>%s</style><pre>' "$PALETTE"
    aha --no-header --stylesheet < "assets/$name.ansi"
    printf '</pre>'
  } > "$work/$name.html"
  "$chrome" --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
    --window-size=1300,785 --screenshot="$PWD/assets/$name.png" "file://$work/$name.html" >/dev/null 2>&1
  echo "wrote assets/$name.png"
}

wait_for "Environments"
photograph console-overview

# The staging demo up to its failure threshold: stg-web-4 fails its health check in wave 2.
keys Down
wait_for "Hosts — staging"
keys Enter
wait_for "Release:"
keys -l "2.4.1"
keys Enter
wait_for "Enter start"
keys Enter
wait_for "allowed: stg-web-4"
photograph console-deploy

keys a
wait_for "Reason:"
keys -l "screenshots taken"
keys Enter
wait_for "ABORTED"
