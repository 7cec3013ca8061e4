# A second, shorter device session (after MemberAdamW's whole-tensor CUDA path): CUDA tests, the
# host-sync check (step time at 64 seeds), the S = 16 run alone, member identity, throughput (quick).
OUT_DEFAULT=benchmarks/results/gpu DEADLINE_S=600
source benchmarks/gpu_common.sh
{
timeout 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" -k cuda tests/test_determinism.py tests/test_mixers.py 2>&1 | tail -15
timeout 40 python3 benchmarks/gpu_sync_check.py --device cuda --seeds 64 --steps 200 --out $OUT/gpu_sync_check.json
timeout 150 python3 benchmarks/gpu_grid.py --device cuda --out /tmp/paper-S16 --alone 8 --alone-only --results $OUT
timeout 30 python3 benchmarks/gpu_member_identity.py --device cuda --steps 20 --out $OUT/gpu_member_identity.json
timeout 60 python3 benchmarks/train_throughput.py --device cuda --quick --out $OUT/train_throughput_cuda.json 2>&1 | tail -14
} 2>&1 | tee $OUT/log.txt
