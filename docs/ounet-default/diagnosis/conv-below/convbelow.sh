#!/bin/bash
# R44 (issue 23): does spatial depth at the last steps alone render the O-UNet's shapes as the teacher does? Adam
# conv references (3 x 5x5 tanh layers) fitted only below t = 300 (the last two of 8 steps) and below t = 550.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p $OUT /tmp/dn
t0=$(date +%s)
python3 -m organic_sd.cli precompute denoiser --teacher ddpm-mnist:runs/gpu/ddpm-mnist --out /tmp/dn/dn --samples 8192 \
  --steps 20 --renoise 16 --batch 1024 --device cuda > /tmp/dn/store.log 2>&1; echo "store $(( $(date +%s) - t0 )) s"
for b in 300 550; do
  timeout -s INT 500 python3 bench/ounet_conv_reference.py --store /tmp/dn/dn --teacher ddpm-mnist:runs/gpu/ddpm-mnist \
    --seconds 300 --batch 256 --records 20000 --device cuda --n 1000 --seed 7002 --below $b \
    --png $OUT/below$b.png --json $OUT/below$b.json > /tmp/dn/below$b.log 2>&1 &
done
wait
for b in 300 550; do echo "== below $b"; tail -n 6 /tmp/dn/below$b.log; done
echo "total $(( $(date +%s) - t0 )) s"
