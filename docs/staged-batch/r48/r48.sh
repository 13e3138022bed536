#!/bin/bash
# R48 (issue 24): R46's carry3 staged reference, and a conv decoder reference at the pair's budget, plain and with
# colour jitter; scored on st6 held-out (chooses), sk (17 skimage photos) and s14 (Set14 at 256 px) (report).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRAIN=runs/gpu/train TEACHER=runs/gpu/taef2 W=/tmp/w
OSD="python3 -m organic_sd.cli"
mkdir -p $W
t0=$(date +%s)
$OSD precompute frames $TRAIN --teacher $TEACHER --out $W/st6 --views 6 --batch 32 --val-fraction 0.1 --device cuda 2>&1 | tail -1
touch $W/st6/.done
$OSD precompute frames runs/gpu/skphotos --teacher $TEACHER --out $W/sk --views 1 --val-fraction 0 --device cuda 2>&1 | tail -1
$OSD precompute frames runs/gpu/val/cset14 --teacher $TEACHER --out $W/s14 --views 1 --val-fraction 0 --device cuda 2>&1 | tail -1
echo "stores $(( $(date +%s) - t0 )) s"
timeout -s INT 300 bash bench/staged_gpu.sh ref rC3 --stages 5:96 5:64:1:1 3:48:1:3 > $W/rC3.log 2>&1 &
for j in 0 1; do
  (cd bench && timeout 420 python3 conv_decoder_reference.py --store $W/st6 --teacher ../$TEACHER --seconds 240 \
    --jitter $j --device cuda --score st6=$W/st6:val sk=$W/sk:all s14=$W/s14:all --json $OUT/conv_j$j.json) \
    > $W/conv_j$j.log 2>&1 &
done
wait
for f in rC3 conv_j0 conv_j1; do echo "== $f"; grep -v "^  Adam" $W/$f.log | tail -n 6; cp $W/$f.log $OUT/ 2>/dev/null; done
cp $W/rC3/reference.json $OUT/rC3_reference.json 2>/dev/null; cp $W/heldout_rC3.json $OUT/ 2>/dev/null
(cd bench && python3 heldout_decoders.py --store $W/sk --split train --decoders rC3=$W/rC3 --out $OUT/sk_rC3.json 2>&1 | tail -1
 python3 heldout_decoders.py --store $W/s14 --split train --decoders rC3=$W/rC3 --out $OUT/s14_rC3.json 2>&1 | tail -1)
echo "total $(( $(date +%s) - t0 )) s"
