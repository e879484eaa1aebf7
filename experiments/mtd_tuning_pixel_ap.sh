#!/usr/bin/env bash
# The pixel AP search of issue 14 on half A (docs/results/mtd_tuning_efficientnet_lite0.md, optionsA7.jsonl).
# Usage: bash experiments/mtd_tuning_pixel_ap.sh DATA_ROOT   (features first: mtd_tuning.py features)
DATA=${1:?usage: bash experiments/mtd_tuning_pixel_ap.sh DATA_ROOT}
set -e
O=${XDG_CACHE_HOME:-$HOME/.cache}/subspace_jax/mtd_tuning/optionsA7.jsonl  # where the table and frontier commands look
T="python experiments/mtd_tuning.py options --data-root $DATA --half A --scores max top1% --out $O"
$T --variant k=5,lam=50 --fusions blend0.5 blend1 blend2 blend1@1,2,0.5 none@1,2,0.5
$T --variant k=20,lam=50,projection=pca,channels=2:8\;3:32\;4:64,bank_dtype=bfloat16 --fusions blend1 blend2
$T --variant k=5,lam=50,aggregate=3 --fusions blend1 blend1@1,2,0.5
$T --variant k=5,lam=50,reconstruction=pixel --fusions none blend1 blend1@1,2,0.5
$T --variant k=5,lam=50,reconstruction=pixel,radius=1,pixel_k=1 --fusions none blend1
$T --variant k=5,lam=50,reconstruction=pixel,radius=2,pixel_k=5 --fusions none blend1
$T --variant k=5,lam=50,reconstruction=pixel,aggregate=3 --fusions none blend0.5 blend1 blend1@1,1,0.5 blend1@1,2,0.5
$T --variant k=5,lam=50,reconstruction=pixel,aggregate=3,levels=23,coreset=300,bank_dtype=bfloat16 --fusions none blend1 blend1@1,2
$T --variant k=5,lam=50,reconstruction=pixel,aggregate=3,projection=pca,channels=2:8\;3:32\;4:64,bank_dtype=bfloat16 --fusions none blend1
$T --variant k=5,lam=50,reconstruction=pixel,aggregate=3,projection=random,channels=2:8\;3:32\;4:64,bank_dtype=bfloat16 --fusions none blend1
$T --variant k=5,lam=50,reconstruction=pixel,aggregate=3,coreset=260,projection=random,channels=4:64,bank_dtype=bfloat16 --fusions none blend1@1,1,0.5
