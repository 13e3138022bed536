#!/bin/bash
# R43 (issue 23): clean stages on the shipped Q's low stack, fitted on one GPU for the same seconds: the 5x5 x0 window
# (the shipped shape), + the low stack's 48 hidden units at the pixel (carry 1x1), + their 3x3 window (carry 3x3).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
mkdir -p $OUT/logs /tmp/dn
t0=$(date +%s)
python3 -m organic_sd.cli precompute denoiser --teacher ddpm-mnist:runs/gpu/ddpm-mnist --out /tmp/dn/dn --samples 8192 \
  --steps 20 --renoise 16 --batch 1024 --device cuda > $OUT/logs/store.log 2>&1; echo "store $(( $(date +%s) - t0 )) s"
for c in 0 1 3; do
  timeout -s INT 470 python3 runs/gpu/hid_clean.py --carry $c --store /tmp/dn/dn --device cuda --seconds 300 --rows 2000000 \
    --n 1000 --threads 5 --teacher ddpm-mnist:runs/gpu/ddpm-mnist --out $OUT/hc$c > $OUT/logs/hc$c.log 2>&1 &
done
wait
for c in 0 1 3; do echo "== carry $c"; grep -v '^  \|^ "dims\|^{\|^}' $OUT/logs/hc$c.log | tail -n 4; python3 -c "
import json; d=json.load(open('$OUT/hc$c.json')); o=d['ounet']; t=d['teacher']
print('heldout', d['heldout_update_weighted'], 'shipped', d['shipped_heldout'], 'row', d['row_x0_mse'], 'params', d['params'])
print('Q+clean KID %.1f P %.3f R %.3f low %.4f psnr %.2f | teacher KID %.1f low %.4f' % (o['kid_x1000'], o['precision'], o['recall'], o['denoise_err'], o['psnr_vs_teacher'], t['kid_x1000'], t['denoise_err']))" 2>&1 | tail -2; done
echo "total $(( $(date +%s) - t0 )) s"
