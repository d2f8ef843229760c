"""Benchmark: RankMe, α-ReQ and LiDAR against a linear probe on the same features.

The α-ReQ paper (Agrawal et al., NeurIPS 2022) reports α about 16× cheaper to
compute than a linear probe. This script times, on a synthetic 25,600 × 2,048
float32 feature matrix with 10 classes (the RankMe paper's N, a ResNet-50's
D), ``cookbook.metrics.rankme``, ``cookbook.metrics.alpha_req`` and
``cookbook.evaluate.linear_probe`` with its default grid and epochs, and
``cookbook.metrics.lidar`` on the same rows seen as ``--views`` views of each of
N / views images (LiDAR needs several views per image; the timing does not
depend on what the rows hold) — on the CPU and, when one is available, on the
GPU — and prints seconds and the probe/α ratio per device.

    python benchmarks/metrics.py                 # CPU, plus CUDA if available
    python benchmarks/metrics.py --n 5000 --d 512 --devices cpu
"""

from __future__ import annotations

import argparse
import time

import torch

from cookbook import evaluate, metrics


def synthetic_features(n: int, d: int, n_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means in a random subspace plus noise with a 1/i covariance spectrum (α ≈ 1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    means = torch.randn(n_classes, d, generator=g) * 0.0015
    noise = torch.randn(n, d, generator=g) * torch.arange(1, d + 1).float().pow(-0.5)
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    return (means[y] + noise) @ rotation, y


def timed(function, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25_600)
    parser.add_argument("--d", type=int, default=2_048)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--views", type=int, default=8, help="LiDAR: views per image (rows = images x views)")
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda if available")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    x, y = synthetic_features(args.n + args.n // 5, args.d, args.classes)
    x, y, x_test, y_test = x[: args.n], y[: args.n], x[args.n :], y[args.n :]
    print(f"features {args.n} × {args.d} float32 (+ {len(y_test)} test), {args.classes} classes; "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")

    rows = []
    for name in devices:
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"device: {label}")
        z, z_test = x.to(device), x_test.to(device)
        # Warm-up: lazy imports, LAPACK, and on CUDA the context and cuBLAS/cuSOLVER handles.
        metrics.rankme(z[:4096])
        metrics.alpha_req(z[:4096])
        metrics.lidar(z[:4096].reshape(-1, args.views, args.d))
        evaluate.linear_probe(z[:4096], y[:4096], z_test[:512], y_test[:512], epochs=1, device=device)
        seconds = {}
        seconds["rankme"], score = timed(lambda: metrics.rankme(z), device)
        seconds["alpha_req"], alpha = timed(lambda: metrics.alpha_req(z), device)
        views = z[: args.n - args.n % args.views].reshape(-1, args.views, args.d)
        seconds["lidar"], lidar = timed(lambda: metrics.lidar(views), device)
        seconds["linear_probe"], accuracy = timed(
            lambda: evaluate.linear_probe(z, y, z_test, y_test, device=device), device)
        print(f"  RankMe {score:.1f}, α {alpha.alpha:.3f} (R² {alpha.r2:.3f}), LiDAR {lidar:.1f} "
              f"({len(views)} images x {args.views} views), probe accuracy {accuracy:.3f}")
        rows += [(op, label, s) for op, s in seconds.items()]
        rows.append(("probe / α", label, seconds["linear_probe"] / seconds["alpha_req"]))

    print()
    print(f"| {'operation':<13} | {'device':<24} | {'seconds (ratio)':>15} |")
    print(f"|{'-' * 15}|{'-' * 26}|{'-' * 17}|")
    for op, label, value in rows:
        print(f"| {op:<13} | {label:<24} | {value:>15.3f} |")


if __name__ == "__main__":
    main()
