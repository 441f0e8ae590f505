#!/usr/bin/env bash
# Creates (or refreshes) the development environment in .venv on a machine with no ROS install:
# pinned ROS 2 Kilted wheels, torch (CPU), the project's dependencies, the tf2_msgs interface
# built locally, and the project itself (editable). Idempotent: a second run takes ~1 s.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SIRENPOSE_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
stamp="$venv/.sirenpose-env"
want="$(cat "$root/requirements.txt" "$root/requirements-interfaces.txt" "$root/requirements-nodeps.txt" \
        "$root/interfaces/tf2_msgs/CMakeLists.txt" "$root/setup.py" "$0" | sha256sum | cut -c1-16)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
start=$(date +%s)

if [[ ! -x "$venv/bin/python" ]]; then
  ver="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ "$ver" != "3.11" ]]; then
    echo "bootstrap: the ROS 2 Kilted wheels are built for CPython 3.11, found $ver ($py)." >&2
    echo "bootstrap: set PYTHON=/path/to/python3.11 and run again." >&2
    exit 2
  fi
  echo "bootstrap: creating $venv"
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
echo "bootstrap: installing pinned dependencies (ROS 2 Kilted wheels, torch==2.13.0 CPU, ...)"
"${pip[@]}" install -r "$root/requirements.txt" -r "$root/requirements-interfaces.txt" 2>&1 \
  | grep -v "is ignored: it is neither" || true
"${pip[@]}" install --no-deps -r "$root/requirements-nodeps.txt" 2>&1 \
  | grep -v "is ignored: it is neither" || true
"$venv/bin/python" -c "import rclpy, torch, cv2, rosbags, onnxruntime" \
  || { echo "bootstrap: dependency install failed" >&2; exit 1; }

# tf2_msgs has no wheel: generate it from its .msg with the rosidl generator wheels. The cmake
# steps run under the venv's Python so that the ROS wheels' library path is set.
if ! "$venv/bin/python" -c "import tf2_msgs.msg" 2>/dev/null; then
  echo "bootstrap: building the tf2_msgs interface (about 10 s)"
  build="$(mktemp -d)"
  trap 'rm -rf "$build"' EXIT
  AMENT_PREFIX_PATH="$venv" "$venv/bin/python" - "$root/interfaces/tf2_msgs" "$build" "$venv" <<'PY'
import subprocess, sys
src, build, venv = sys.argv[1:4]
def run(cmd):
    r = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        sys.exit(f"bootstrap: {' '.join(cmd[:2])} failed")
run(["cmake", src, f"-DCMAKE_PREFIX_PATH={venv}", f"-DPython3_EXECUTABLE={venv}/bin/python",
     f"-DCMAKE_INSTALL_PREFIX={venv}", "-DBUILD_TESTING=OFF"])
run(["cmake", "--build", ".", "-j2"])
run(["cmake", "--install", "."])
PY
  "$venv/bin/python" -c "import tf2_msgs.msg" \
    || { echo "bootstrap: tf2_msgs built but does not import" >&2; exit 1; }
fi

echo "bootstrap: installing sirenpose_ros (editable)"
"${pip[@]}" install --no-deps --no-build-isolation -e "$root" 2>&1 | grep -v "is ignored: it is neither" || true
echo "$want" > "$stamp"
echo "bootstrap: environment ready in $(( $(date +%s) - start )) s: $venv"
