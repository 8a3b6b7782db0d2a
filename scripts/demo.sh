#!/usr/bin/env bash
# The main job on the embedded default: loc3r_node (embedded Loc3R-VLM + CUT3R) is fed a
# walk-through of a synthetic room it never saw in training by the frame player; situated
# questions go through /loc3r/ask and the replies are printed next to the ground truth.
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
lib=install/loc3r_ros/lib/loc3r_ros

echo "== a held-out synthetic room like the model's training rooms -> $work/frames"
"$lib/loc3r" scene "$work/frames" --seed 1000003 --as-trained
"$lib/loc3r_node" --ros-args -p keyframe_min_change:=0.0 -p keyframe_min_interval_s:=0.0 \
  > "$work/node.log" 2>&1 &
pids+=($!)
"$lib/frame_player" "$work/frames" --rate 4 > "$work/player.log" 2>&1
sleep 2
python - "$work/frames/questions.json" "$lib/ask" <<'PY'
import json, math, subprocess, sys
records = json.load(open(sys.argv[1]))
picked, seen = [], set()
for r in records:  # one question of each type, at most 4
    if r["question_type"] not in seen and len(picked) < 4:
        seen.add(r["question_type"]); picked.append(r)
for r in picked:
    out = subprocess.run([sys.argv[2], r["question"], "--situation", r["situation"], "--json",
                          "--timeout", "120"], capture_output=True, text=True)
    print(f"\nsituation: {r['situation']}\nquestion:  {r['question']}")
    try:
        reply = json.loads(out.stdout)
    except json.JSONDecodeError:
        print("  no reply:", out.stderr.strip() or out.stdout.strip()); continue
    if not reply["success"]:
        print("  failed:", reply["message"]); continue
    print(f"  answer:  {reply['answer']!r}   (truth: {r['answers'][0]!r})")
    pose = reply.get("pose")
    if pose:
        err = math.dist((pose["x"], pose["y"]), r["position"])
        yaw_err = abs(math.degrees(math.remainder(math.radians(pose["yaw_deg"]) - r["yaw"], 2 * math.pi)))
        print(f"  agent:   x={pose['x']:.2f} y={pose['y']:.2f} yaw={pose['yaw_deg']:.0f} deg "
              f"(sigma {pose['position_sigma_m']:.2f} m)   truth: x={r['position'][0]:.2f} "
              f"y={r['position'][1]:.2f} yaw={math.degrees(r['yaw']):.0f} deg -> error {err:.2f} m, {yaw_err:.0f} deg")
PY
echo; echo "== node log"; tail -3 "$work/node.log"
