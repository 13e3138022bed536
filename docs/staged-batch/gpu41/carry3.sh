#!/bin/bash
# R46 (issue 24): the Adam reference of the shipped decoder's shape with stage 3 reading a 3x3 window of stage 2's
# hidden units (carry 3) instead of the unit's own cell (carry 1). Scored on st6's held-out split.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TRAIN=runs/gpu/train TEACHER=runs/gpu/taef2 W=/tmp/w
mkdir -p $W
t0=$(date +%s)
timeout -s INT 230 bash bench/staged_gpu.sh ref rC3 --stages 5:96 5:64:1:1 3:48:1:3 2>&1 | tail -n 8
cp $W/rC3/reference.json $OUT/rC3_reference.json 2>/dev/null; cp $W/heldout_rC3.json $OUT/ 2>/dev/null
echo "total $(( $(date +%s) - t0 )) s"
