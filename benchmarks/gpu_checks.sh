#!/usr/bin/env bash
# The GPU checks of memray in one run (under 10 minutes on one H100; each step has its own time limit):
#   1. the tests marked `gpu` (bf16 embedding vs float32 CPU, the torch/cuda scoring path vs numpy);
#   2. all-layer ViT-B/16 bf16 embedding throughput vs forward_features (bench_embed.py);
#   3. FAISS exact search on the GPU vs the CPU (needs faiss-gpu; skipped with a line otherwise);
#   4. the scoring fit at the paper's shape (T 50k, d 768 -> 64, 10 restarts): numpy CPU vs torch cuda, the ratio
#      and the largest |dC_T| (bench_score_device.py).
# Usage: bash benchmarks/gpu_checks.sh            (PYTHON=... to pick the interpreter)
#        bash benchmarks/gpu_checks.sh --dry-run  (no GPU: every step at a small shape, torch on the CPU)
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
DRY=0; [ "${1:-}" = "--dry-run" ] && DRY=1
status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, report its exit status, keep going
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@"; local rc=$?
  echo "=== $name: exit $rc, $((SECONDS - t0)) s"
  [ $rc -ne 0 ] && status=1
  return 0
}

"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
EOF

if [ $DRY -eq 1 ]; then
  step "gpu tests (collected; skipped without CUDA)" 300 "$PY" -m pytest -q -m gpu tests/test_embed.py tests/test_stats_device.py
  step "embedding throughput (ViT-Tiny, CPU)" 120 "$PY" benchmarks/bench_embed.py --models vit_tiny_patch16_224 --batch-size 2 --iters 1
  FAISS_ROWS=5000 FAISS_QUERIES=500
  step "scoring fit numpy vs torch (small, torch on the CPU)" 300 "$PY" benchmarks/bench_score_device.py \
    --device cpu --train 3000 --test 500 --dim 64 --sets 2 --gen 200 --restarts 2 --repeats 1
else
  step "gpu tests" 150 "$PY" -m pytest -q -m gpu tests
  step "embedding throughput (ViT-B/16 bf16, all 12 layers)" 120 "$PY" benchmarks/bench_embed.py \
    --models vit_base_patch16_224 --batch-size 256 --iters 5 --warmup 2 --peak-tflops 989
  FAISS_ROWS=50000 FAISS_QUERIES=10000
  step "scoring fit numpy vs cuda (paper shape)" 240 "$PY" benchmarks/bench_score_device.py --device cuda
fi

FAISS_ROWS=$FAISS_ROWS FAISS_QUERIES=$FAISS_QUERIES step "FAISS exact search GPU vs CPU" 60 "$PY" - <<'EOF'
import os, time
import numpy as np
from memray.stats.faiss_backend import faiss, gpu_available, to_gpu
n, q, d, k = int(os.environ["FAISS_ROWS"]), int(os.environ["FAISS_QUERIES"]), 64, 5
rng = np.random.default_rng(0)
xb, xq = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(q, d)).astype(np.float32)
cpu = faiss.IndexFlatL2(d); cpu.add(xb)
def timed(index):
    index.search(xq[:10], k)
    t0 = time.perf_counter(); dist, ids = index.search(xq, k); return time.perf_counter() - t0, ids
t_cpu, i_cpu = timed(cpu)
print(f"FAISS flat L2, {n} x {d}, {q} queries, top-{k}: cpu {t_cpu:.3f} s")
if not gpu_available():
    print("FAISS GPU: not available (faiss-cpu installed, or no GPU visible); skipped")
else:
    t_gpu, i_gpu = timed(to_gpu(cpu))
    print(f"FAISS GPU {t_gpu:.3f} s, ratio cpu/gpu {t_cpu / t_gpu:.1f}x, top-1 agreement {(i_cpu[:, 0] == i_gpu[:, 0]).mean():.4f}")
EOF
echo "=== all steps done: $([ $status -eq 0 ] && echo ok || echo 'some step failed')"
exit $status
