#!/bin/bash
# R42 (issue 24): does more views of the same training photos lift the Adam reference of the shipped decoder shape
# on st6's held-out photos? And a wider stage 3 (96 units) on st6. References only: they choose nothing shipped.
set -o pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRAIN=runs/gpu/train TEACHER=runs/gpu/taef2 W=/tmp/w
mkdir -p $W $OUT/logs
S="5:96 5:64:1:1 3:48:1:1"
t0=$(date +%s)
python3 -m organic_sd.cli precompute $TRAIN --teacher $TEACHER --out $W/st6 --views 6 --batch 32 --val-fraction 0.1 \
  --device cuda > $OUT/logs/st6.log 2>&1 && touch $W/st6/.done; echo "st6 built $(( $(date +%s) - t0 )) s"
( python3 -m organic_sd.cli precompute $TRAIN --teacher $TEACHER --out $W/st24 --views 24 --batch 32 \
    --val-fraction 0.1 --device cuda > $OUT/logs/st24.log 2>&1; echo "st24 built $(( $(date +%s) - t0 )) s" ) &
b=$!
timeout -s INT 200 bash bench/staged_gpu.sh ref rS6 --stages $S > $OUT/logs/rS6.log 2>&1 &
timeout -s INT 200 bash bench/staged_gpu.sh ref rW3 --stages 5:96 5:64:1:1 3:96:1:1 > $OUT/logs/rW3.log 2>&1 &
wait $b
echo "st24 done at $(( $(date +%s) - t0 )) s"; tail -n 2 $OUT/logs/st24.log
timeout -s INT 230 bash bench/staged_gpu.sh ref rS24 --stages $S --store $W/st24 > $OUT/logs/rS24.log 2>&1
wait
for n in rS6 rW3 rS24; do echo "== $n"; tail -n 6 $OUT/logs/$n.log; cp $W/heldout_$n.json $OUT/ 2>/dev/null; cp $W/$n/reference.json $OUT/${n}_reference.json 2>/dev/null; done
echo "total $(( $(date +%s) - t0 )) s"
