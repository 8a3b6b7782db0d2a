#!/usr/bin/env bash
# The main job on the embedded default: loc3r_node fed by the frame player with a demo scene,
# then situated questions through /loc3r/ask, printed as the robot would get them.
# DDS stays on this machine (LOCALHOST discovery, a domain of its own) unless you set
# LOC3R_DEMO_KEEP_ROS_ENV=1 to use your own ROS_DOMAIN_ID / discovery settings (e.g. for RViz).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck disable=SC1091
set +u; source env.sh; set -u
if [ -z "${LOC3R_DEMO_KEEP_ROS_ENV:-}" ]; then
  export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$(( (RANDOM % 100) + 1 ))
fi
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== demo scene -> $work/frames"
python -m loc3r.demo_scene "$work/frames"
lib=install/loc3r_ros/lib/loc3r_ros
"$lib/loc3r_node" --ros-args -p keyframe_min_change:=0.0 > "$work/node.log" 2>&1 &
pids+=($!)
"$lib/frame_player" "$work/frames" --rate 10 --loop > "$work/player.log" 2>&1 &
pids+=($!)
sleep 4
ask() { echo; echo "Q: $1${2:+  (situation: $2)}"; "$lib/ask" "$1" --situation "${2:-}" --timeout 120 || true; }
ask "What is on my left?" "I am sitting on the bed facing the window"
ask "How many chairs are in the room?"
ask ""
echo; echo "== node log"; tail -5 "$work/node.log"
