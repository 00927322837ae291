#!/usr/bin/env bash
# The GPU checks of issues 5 and 6, as one run on the (air-gapped) device machine.
#
# Carried beside the working tree (both ignored by git, see README "GPU checks"):
#   .whl/       wheels of what the device image lacks (diffusers, open_clip_torch, ftfy, wcwidth,
#               tenacity, duckdb, bm25s, jsonschema + referencing + jsonschema-specifications + rpds-py)
#   .devcarry/  all-MiniLM-L6-v2 packed by scripts/make_device_minilm.py (the real model is over the
#               64 MiB carry limit)
# Writes its reports to $OUT; `scripts/device_gpu_report.py DIR` turns them into BENCHMARKS.md sections.
set -uo pipefail
: "${OUT:?OUT must name the report folder}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 scripts/make_device_minilm.py unpack .devcarry/minilm /tmp/minilm || exit 1
export STYLUS_DOCS_MINILM_DIR=/tmp/minilm
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, transformers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
status=0
if [[ "${CHECKS:-render,compose}" == *render* ]]; then
timeout "${RENDER_TIMEOUT:-240}" python3 scripts/gpu_render_bench.py --out "$OUT/render.json" >"$OUT/render.log" 2>&1 || status=$?
echo "render bench exit $status"; tail -n 25 "$OUT/render.log"
fi
status2=0
if [[ "${CHECKS:-render,compose}" == *compose* ]]; then
timeout "${COMPOSE_TIMEOUT:-240}" python3 scripts/gpu_compose_bench.py --reps 5 --out "$OUT" >"$OUT/compose.log" 2>&1 || status2=$?
echo "compose bench exit $status2"; tail -n 40 "$OUT/compose.log"
fi
exit $(( status || status2 ))
