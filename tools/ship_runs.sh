#!/bin/bash
# Shipped-weights recipe: two streams of one thread each on this 2-core CPU.
cd "$(dirname "$0")/.."
COMMON="--data ../shared/camvid --crop 256x320 --scale 0.75,1.5 --flips h --optimizer adamw --lr 2e-3 --weight-decay 1e-4 --schedule poly --warmup 50 --class-weighting sqrt-median --batch-size 8 --val-every 2 --half --threads 1"
stream_a() {
  .venv/bin/python -m sis train --model unet-resnet18 --epochs 20 --out runs/ship/unet-resnet18 $COMMON
  .venv/bin/python -m sis train --model pspnet-resnet18 --epochs 20 --out runs/ship/pspnet-resnet18 $COMMON
}
stream_b() {
  .venv/bin/python -m sis train --model pspnet-vgg11_bn --epochs 8 --out runs/ship/pspnet-vgg11_bn $COMMON
  .venv/bin/python -m sis train --model unet-vgg11_bn --epochs 8 --out runs/ship/unet-vgg11_bn $COMMON
}
stream_a > runs/ship_a.log 2>&1 &
stream_b > runs/ship_b.log 2>&1 &
wait
