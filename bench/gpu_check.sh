#!/usr/bin/env bash
# Everything a GPU machine has to check, in one run that fits a short lease: build with the CUDA
# kernels, run every test that touches the GPU (Triton and CUDA backends, `gpu`-marked tests),
# then the benchmark module by module (each with its own time limit, so one slow module cannot
# starve the rest). Logs, JUnit XML and bench JSON go to OUT_DIR (default $OUT, else ./gpu-check).
#
#   bash bench/gpu_check.sh [OUT_DIR]
#
# Environment: BUILD_S / TEST_S / BENCH_MODULE_S (time limits, seconds), PYTEST_WORKERS (default 8),
# TEST_K (pytest's -k selection, default "triton or cuda or gpu"; e.g. a rerun of the last failures),
# BENCH_MIN_TIME (default 0.25 s per candidate), GPU_TIMING ("queued", the default, or "isolated": see
# pyaudiok bench --help; the bench only: the profiles and the tile sweep time queued calls), BENCH_ONLY (space-separated modules, default all;
# BENCH_ONLY=none skips the bench), SWEEP (e.g. "--dtype bf16 --d 64": also time the latent-attention
# kernels' tiles, bench/tile_sweep.py; SWEEP_S, SWEEP_BUDGET_S bound it), SKIP_SETUP=1 (a second call
# on the same warm machine: the wheels and the build are already in place), TESTS=0 (skip the tests),
# PROFILE (';'-separated argument lists of bench/profile.py, e.g. "--only fourier_crop --case 2d
# --index 3": where those cases' time goes; PROFILE_S bounds each), COMPILED_PEERS=1 (also time the
# torch.compile peers; off by default: their compiling would eat the modules' time limits), HOST_COST=1
# (host time per call of each Triton op, called directly and through its registration:
# bench/host_cost.py; HOST_COST_S bounds it), AB_EAGER=1 (model steps with the ops' eager autograd path
# against the registered op's: bench/ab_eager_autograd.py; AB_EAGER_S bounds it).
# A copied tree's git metadata may be stale: the commit recorded in the bench rows is read from
# .bench-commit when present (write it before copying: git rev-parse --short HEAD > .bench-commit).
# Wheels of missing Python packages are installed first when .whl/ holds any, and source
# distributions there are built (machines without a package index). Fill .whl/ on a machine with
# one, e.g. for the peers and audio I/O (cp312 wheels for a Linux x86-64 GPU machine):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     soundfile soxr cffi pycparser vector-quantize-pytorch einx frozendict loguru torch-einops-utils \
#     perceiver-ar-pytorch POT speechbrain hyperpyyaml "ruamel.yaml<0.19" ruamel.yaml.clib
#   (torchsort as an sdist: pip download --no-deps --no-binary=:all: torchsort; it is built there)
set -uo pipefail
out=$(realpath -m "${1:-${OUT:-gpu-check}}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1
[ -f .bench-commit ] && export PYAUDIOK_COMMIT=$(cat .bench-commit)
t0=$(date +%s)
phase() { echo "== $1 (+$(( $(date +%s) - t0 )) s)"; }

export PYTHONPATH=/tmp/pyaudiok-site${PYTHONPATH:+:$PYTHONPATH}
if [ "${SKIP_SETUP:-0}" != 1 ]; then
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pyaudiok-site .whl/*.whl
fi
# Source distributions there (peers with CUDA extensions, e.g. torchsort) are built against this
# machine's torch, for its GPU only.
for sdist in .whl/*.tar.gz; do
  [ -e "$sdist" ] || continue
  nvcc_top=$(echo > /tmp/pyaudiok-probe.cu && nvcc --dryrun -c /tmp/pyaudiok-probe.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
  CUDA_HOME=${CUDA_HOME:-$(realpath -m "$nvcc_top")} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    timeout "${SDIST_S:-300}" python3 -m pip install -q --no-index --no-deps --no-build-isolation \
    --target /tmp/pyaudiok-site "$sdist" > "$out/sdist.log" 2>&1 || echo "building $sdist failed (see sdist.log)"
done
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"

phase "build (CUDA kernels for sm_90a)"
if ! PYAUDIOK_CUDA=1 PYAUDIOK_CUDA_ARCHS=${PYAUDIOK_CUDA_ARCHS:-90a} timeout "${BUILD_S:-300}" \
     python3 -m pip install --no-build-isolation --no-deps --no-index -v -e . > "$out/build.log" 2>&1; then
  tail -n 60 "$out/build.log"; echo "BUILD FAILED"; exit 1
fi
fi  # SKIP_SETUP
python3 -m pyaudiok info 2>&1 | tee "$out/info.txt"

if [ "${TESTS:-1}" != 0 ]; then
phase "tests (Triton, CUDA, gpu-marked)"
workers=${PYTEST_WORKERS:-8}
timeout "${TEST_S:-240}" python3 -m pytest -q -p no:cacheprovider -n "$workers" --timeout 120 \
  -k "${TEST_K:-triton or cuda or gpu}" --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1
echo "pytest exit status $?"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/tests.log" | tail -n 40
fi

phase "bench (--device cuda)"
json_dir=$(mktemp -d)
modules=${BENCH_ONLY:-$(python3 -c "from pyaudiok.bench import registry; print(' '.join(registry.MODULES))")}
[ "$modules" = none ] && modules=""
compile_flag=$([ "${COMPILED_PEERS:-0}" = 1 ] || echo --no-compile)
for module in $modules; do
  timeout "${BENCH_MODULE_S:-60}" python3 -m pyaudiok bench --device cuda --only "$module" $compile_flag \
    --min-time "${BENCH_MIN_TIME:-0.25}" --gpu-timing "${GPU_TIMING:-queued}" --json "$json_dir/$module.json" >> "$out/bench.log" 2>&1 \
    || echo "bench $module: exit status $?" | tee -a "$out/bench.log"
  tar -C "$json_dir" -czf "$out/bench_json.tgz" .
done
grep -vE "^  [a-z_.0-9+]+ \{|^  \| " "$out/bench.log" | grep -vE "^pyaudiok bench on|^wrote |^$|^vs ref" | tail -n 150

if [ -n "${SWEEP:-}" ]; then  # tiles of the latent-attention kernels, timed (bench/tile_sweep.py)
  phase "tile sweep (latent attention, $SWEEP)"
  timeout "${SWEEP_S:-400}" python3 -m pyaudiok.bench.tile_sweep ${SWEEP} --budget "${SWEEP_BUDGET_S:-120}" \
    > "$out/tile_sweep.txt" 2>&1 || echo "tile sweep: exit status $?"
  tail -n 12 "$out/tile_sweep.txt"
fi

if [ -n "${PROFILE:-}" ]; then  # where chosen cases' time goes (bench/profile.py), one per ';'
  phase "profiles"
  IFS=';' read -ra profiles <<< "$PROFILE"
  for spec in "${profiles[@]}"; do
    echo "== profile $spec" >> "$out/profiles.txt"
    timeout "${PROFILE_S:-120}" python3 -m pyaudiok.bench.profile --device cuda $spec >> "$out/profiles.txt" 2>&1 \
      || echo "profile $spec: exit status $?" | tee -a "$out/profiles.txt"
  done
  grep -E "^(==|--)" "$out/profiles.txt"
fi

if [ "${AB_EAGER:-0}" = 1 ]; then  # model steps: eager autograd path against the registered op's (host time)
  phase "eager autograd A/B (model steps)"
  timeout "${AB_EAGER_S:-120}" python3 -m pyaudiok.bench.ab_eager_autograd --device cuda --rounds 6 \
    > "$out/ab_eager_autograd.txt" 2>&1 || echo "eager autograd A/B: exit status $?"
  cat "$out/ab_eager_autograd.txt"
fi

if [ "${HOST_COST:-0}" = 1 ]; then  # host time per call, direct against registered (bench/host_cost.py)
  phase "host cost per call"
  timeout "${HOST_COST_S:-90}" python3 -m pyaudiok.bench.host_cost --device cuda > "$out/host_cost.txt" 2>&1 \
    || echo "host cost: exit status $?"
  cat "$out/host_cost.txt"
fi
phase done
