#!/usr/bin/env bash
# One GPU check: the CUDA tests and the GPU benchmarks of the README, with a summary table.
# Run it on a machine with one CUDA GPU, from the repository root, in an environment where
# torch (a CUDA build) and triton are installed:  bash scripts/gpu_check.sh [OUT_DIR]
# Designed to finish in under 8 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee -a "$summary" || exit 1
pip install -q -e ".[test]" >/dev/null 2>&1 || pip install -q -e . >/dev/null 2>&1

step() {  # name, timeout, command...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local tail_line
  tail_line=$(grep -E "passed|failed|error|wrote|Error" "$out/$name.log" | tail -n 1)
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$tail_line" | tee -a "$summary"
}

# Kernels vs the PyTorch backend (float32/bfloat16), determinism, compile, CUDA-graph capture,
# N > 65535 (tests/triton_interp runs directly on CUDA).
step kernels 240 python -m pytest -q -x -p no:cacheprovider tests/triton_interp
step cuda-tests 150 python -m pytest -q -p no:cacheprovider tests/test_determinism.py \
  tests/test_no_sync.py tests/test_engine.py -k "cuda or compile or grid or determin"
# The GPU benchmark shapes of the README.
step bench-softmax-bf16 120 python -m focalloss bench --device cuda --dtype bfloat16 \
  --loss softmax --shape 8,19,512,1024 --shape 4096,32000 --rounds 20 --json "$out/bench_softmax_bf16.json"
step bench-softmax-fp32 90 python -m focalloss bench --device cuda --dtype float32 \
  --loss softmax --shape 8,19,512,1024 --rounds 20 --json "$out/bench_softmax_fp32.json"
step bench-sigmoid 90 python -m focalloss bench --device cuda --dtype float32 --loss sigmoid \
  --shape 1000000,80 --rounds 20 --json "$out/bench_sigmoid.json"
if [ -f benchmarks/bench_linear.py ]; then
  step bench-linear 120 python benchmarks/bench_linear.py --device cuda
fi
echo
echo "== summary ($summary)"
cat "$summary"
for f in "$out"/bench-*.log; do
  echo "== $f"
  grep -vE "^\s*$" "$f" | tail -n 25
done
