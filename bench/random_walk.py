"""IRNet's dense random walk against ours (sparse), on feature maps of 32², 64² and 128² pixels.

Run from the repository root: ``python bench/random_walk.py [--max-dense-seconds 300]``.
Prints progress lines, then as the last line one JSON object with, per size, ``dense_s``,
``sparse_s``, ``speedup``, ``max_rel_diff`` (largest error of a class map relative to that map's
largest value, ours vs IRNet's float32 computation) and ``peak_mb`` (ours). The dense run is
skipped where its O(N³) time, extrapolated from the previous size, exceeds the budget.
"""

import argparse
import json
import multiprocessing
import re
import time
from pathlib import Path

import torch

from wsss.stages.irnet.random_walk import pair_affinities, propagate

SIZES = (32, 64, 128)
N_CLASSES = 3
RADIUS, BETA, EXP_TIMES = 5, 10.0, 8
SPARSE_REPEATS = 3


def make_inputs(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded CAMs ``[N_CLASSES, size, size]`` in [0, 1) and boundary ``[size, size]`` in [0, 1)."""
    generator = torch.Generator().manual_seed(size)
    cams = torch.rand(N_CLASSES, size, size, generator=generator)
    # Cubing uniform noise leaves most pixels open and some strong boundaries, like a real map.
    boundary = torch.rand(size, size, generator=generator) ** 3
    return cams, boundary


def dense_propagate(
    cams: torch.Tensor, boundary: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """IRNet's propagate_to_edge as IRNet computes it: dense N×N transition matrix (float32 in
    IRNet), squared EXP_TIMES times, then one product with the masked CAMs."""
    n_classes, height, width = cams.shape
    n_pixels = height * width
    cams, boundary = cams.to(dtype), boundary.to(dtype)
    src, dst, affinity = pair_affinities(boundary, RADIUS)
    dense = torch.eye(n_pixels, dtype=dtype)
    dense[src, dst] = affinity
    dense[dst, src] = affinity
    scaled = dense.pow(BETA)
    transition = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(EXP_TIMES):
        transition = transition @ transition
    masked = cams * (1 - boundary)
    return (masked.reshape(n_classes, n_pixels) @ transition).reshape(cams.shape)


def max_relative_diff(result: torch.Tensor, reference: torch.Tensor) -> float:
    error = (result.double() - reference.double()).abs().flatten(1).amax(dim=1)
    return float((error / reference.double().abs().flatten(1).amax(dim=1)).max())


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def sparse_peak_mb(size: int) -> float:
    """Extra resident memory (MiB) while ``propagate`` runs, measured in a fresh process.

    tracemalloc cannot see torch's CPU allocator, so this reads Linux's resident-set high-water
    mark (VmHWM), reset through /proc/self/clear_refs just before the call, minus the resident
    set before it. A fresh process keeps memory freed by other runs from being reused unseen.
    """
    cams, boundary = make_inputs(size)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    propagate(cams, boundary, RADIUS, BETA, EXP_TIMES)
    return (_status_kib("VmHWM") - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-dense-seconds", type=float, default=300.0)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    results = {}
    dense_estimate = 0.0
    spawn = multiprocessing.get_context("spawn")
    for size in SIZES:
        name = f"{size}x{size}"
        cams, boundary = make_inputs(size)
        timings = []
        for _ in range(SPARSE_REPEATS):
            start = time.perf_counter()
            sparse = propagate(cams, boundary, RADIUS, BETA, EXP_TIMES)
            timings.append(time.perf_counter() - start)
        sparse_s = min(timings)
        with spawn.Pool(1) as pool:
            peak_mb = pool.apply(sparse_peak_mb, (size,))
        print(
            f"{name}: sparse {sparse_s:.3f} s (best of {SPARSE_REPEATS}), peak {peak_mb:.1f} MiB",
            flush=True,
        )

        entry = {"sparse_s": sparse_s, "peak_mb": peak_mb}
        if dense_estimate > args.max_dense_seconds:
            gib = 4 * (size * size) ** 2 * 4 / 2**30
            print(
                f"{name}: dense skipped, estimated {dense_estimate:.0f} s (O(N³) from the "
                f"previous size) > {args.max_dense_seconds:.0f} s budget, ~{gib:.0f} GiB",
                flush=True,
            )
            entry |= {
                "dense_s": None,
                "speedup": None,
                "max_rel_diff": None,
                "dense_estimate_s": dense_estimate,
                "speedup_estimate": dense_estimate / sparse_s,
            }
        else:
            print(f"{name}: dense running ...", flush=True)
            start = time.perf_counter()
            dense = dense_propagate(cams, boundary)
            dense_s = time.perf_counter() - start
            diff = max_relative_diff(sparse, dense)
            print(
                f"{name}: dense {dense_s:.2f} s, speedup {dense_s / sparse_s:.0f}x, "
                f"max rel diff {diff:.2e}",
                flush=True,
            )
            entry |= {"dense_s": dense_s, "speedup": dense_s / sparse_s, "max_rel_diff": diff}
            dense_estimate = dense_s * 4**3  # next size has 4x the pixels
            # IRNet's float32 squarings carry their own rounding error; float64 shows whose it is.
            if 2 * dense_s <= args.max_dense_seconds:
                exact = dense_propagate(cams, boundary, torch.float64)
                entry |= {
                    "max_rel_diff_vs_float64_dense": max_relative_diff(sparse, exact),
                    "irnet_float32_rel_err": max_relative_diff(dense, exact),
                }
                print(
                    f"{name}: vs float64 dense: ours {entry['max_rel_diff_vs_float64_dense']:.2e},"
                    f" IRNet's float32 {entry['irnet_float32_rel_err']:.2e}",
                    flush=True,
                )
        results[name] = entry
    print(json.dumps(results))


if __name__ == "__main__":
    main()
