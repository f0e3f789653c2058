"""Peak resident memory of streaming the synthetic set through decode + augment + batching, at
a small and a large data set: memory must not grow with the number of images.

For each size (`--small`, `--large` train images of `--size` px from `build_synthetic_dataset`,
drawn once and reused from `--work`), a fresh Python process starts a fresh
`ray_session(load_config("demo").ray)`, reads the manifest, builds
`decoded_dataset(train rows, root, object classes, size, "strong", AugmentationConfig())` and
iterates it with `iter_batches(batch_size=32)` as a consumer would, touching every batch's
pixels (their mean) and keeping nothing.

What is measured: a background thread samples, every `--interval` s from just after the
cluster is up until the last batch, the resident set size (RSS) of the driver plus every
process among the driver's descendants whose process name or command line starts with
"ray::", summed, and keeps the peak of that sum. Those are the map tasks' workers, idle
workers, Ray Data's actors (`_StatsActor`, `_AutoscalingCoordinatorActor`) and also two of
Ray's per-node agents that carry the same prefix (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`); the rule is kept as it is, name-based, so that both sizes count the
same set of processes. Ray's other services (raylet with the object store, GCS, dashboard,
log monitor) are left out of the headline number: they are the cluster's fixed cost whatever
the job, and the object store they host is capped by the config (`object_store_gb`) rather
than by the data set; their peak is printed separately as a progress line. Only the driver's
descendants are counted, so other Ray clusters on the machine do not leak into the sum. RSS
counts shared pages (libraries, object-store pages a worker has touched) once per process
that maps them, so the sum overstates the machine's actual use; it does so in the same way
at both sizes, which is what the ratio compares. Each size runs in its own process so that
neither inherits the other's driver heap.

Prints progress, and as the last line one JSON object: `rss_small_mb`, `rss_large_mb` (peak
summed RSS, MiB), `ratio` (large / small; the target is <= 1.15), `images_small`,
`images_large` (images streamed).

Run: `python bench/streaming_memory.py [--small 2000] [--large 20000] [--size 64] [--work DIR]`.
"""

# wsss sets RAY_AUTH_MODE for the clusters it starts, and Ray reads that once, when imported.
import wsss  # noqa: F401  # isort: skip

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray.data

# psutil comes with Ray (ray/thirdparty_files), which puts it on sys.path when imported.
import psutil  # isort: skip

from wsss.platform.config import AugmentationConfig, SyntheticConfig, load_config
from wsss.platform.datasets.manifest import DATASET_FILE, load_dataset
from wsss.platform.datasets.synthetic.writing import build_synthetic_dataset
from wsss.platform.loaders.batches import decoded_dataset
from wsss.platform.ray_cluster import ray_session

PRESET = "demo"
MIB = 1024**2
WORKER_PREFIX = "ray::"


def is_ray_worker(process: psutil.Process) -> bool:
    """A Ray worker process (task or actor): Ray renames them `ray::<what they run>`."""
    if process.name().startswith(WORKER_PREFIX):
        return True
    command = process.cmdline()
    return bool(command) and command[0].startswith(WORKER_PREFIX)


class RssSampler:
    """Samples, every `interval` s in a background thread, the RSS of this process plus its
    `ray::` descendants (summed: `peak_bytes`) and of its other descendants, Ray's remaining
    services (summed: `peak_services_bytes`)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self.peak_services_bytes = 0
        self.first_bytes = 0
        self.samples = 0
        self.worker_names: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> tuple[int, int]:
        """(bytes of the driver + Ray workers, bytes of Ray's services), RSS summed."""
        driver = psutil.Process()
        job, services = driver.memory_info().rss, 0
        for child in driver.children(recursive=True):
            try:
                rss = child.memory_info().rss
                if is_ray_worker(child):
                    job += rss
                    self.worker_names.add(child.name())
                else:
                    services += rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a worker exiting between the listing and the reading
        return job, services

    def _run(self) -> None:
        while True:
            job, services = self.sample()
            if self.samples == 0:
                self.first_bytes = job
            self.samples += 1
            self.peak_bytes = max(self.peak_bytes, job)
            self.peak_services_bytes = max(self.peak_services_bytes, services)
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def prepare_dataset(work: Path, images: int, size: int, seed: int) -> Path:
    """The folder of a synthetic set with `images` train images, drawn unless already there."""
    folder = work / f"synthetic-{images}x{size}-seed{seed}"
    if (folder / DATASET_FILE).is_file():
        print(f"reusing the synthetic set in {folder}", flush=True)
        return folder
    print(f"drawing {images} train images of {size}x{size} px into {folder}", flush=True)
    config = SyntheticConfig(image_size=size, train_images=images, val_images=1, test_images=1)
    start = time.perf_counter()
    build_synthetic_dataset(folder, config, seed)
    print(f"  drawn in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def stream_once(folder: Path, size: int, batch_size: int, interval: float) -> dict[str, Any]:
    """Stream one data set's train split through decode + augment + batching in a fresh local
    Ray cluster; the peak summed RSS and what was streamed."""
    config = load_config(PRESET)
    with ray_session(config.ray) as where:
        print(f"  running on {where}", flush=True)
        ray.data.DataContext.get_current().enable_progress_bars = False
        sampler = RssSampler(interval)
        sampler.start()
        start = time.perf_counter()
        # Reading the manifest is inside the measurement: the driver holds every row's
        # metadata, which is the part of the pipeline that does scale with the data set.
        info, rows = load_dataset(folder)
        train = [r for r in rows if r.split == "train"]
        dataset = decoded_dataset(
            train, info.root, info.object_classes, size, "strong", AugmentationConfig()
        )
        images, batches, pixel_mean = 0, 0, 0.0
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            # Touch every pixel, as a consumer would, and keep nothing.
            pixel_mean += float(batch["image"].mean())
            images += len(batch["image"])
            batches += 1
        elapsed = time.perf_counter() - start
        sampler.stop()
    if images != len(train):
        raise RuntimeError(f"streamed {images} images of {len(train)} train rows")
    print(
        f"  streamed {images} images in {batches} batches in {elapsed:.1f} s "
        f"({images / elapsed:.0f} img/s, mean pixel {pixel_mean / max(batches, 1):.1f}); "
        f"{sampler.samples} samples",
        flush=True,
    )
    print(
        f"  summed RSS at start {sampler.first_bytes / MIB:.0f} MiB, "
        f"peak {sampler.peak_bytes / MIB:.0f} MiB; "
        f"Ray services' peak (not counted) {sampler.peak_services_bytes / MIB:.0f} MiB; "
        f"worker processes seen: {', '.join(sorted(sampler.worker_names))}",
        flush=True,
    )
    return {"peak_mb": sampler.peak_bytes / MIB, "images": images}


def measure_in_subprocess(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run `stream_once` in a new Python process (this script with `--one`), echoing its
    output; it prints its result as one JSON line."""
    command = [
        sys.executable,
        __file__,
        "--one",
        str(folder),
        "--size",
        str(args.size),
        "--batch-size",
        str(args.batch_size),
        "--interval",
        str(args.interval),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line)
            print(line, end="", flush=True)
    if child.returncode != 0:
        raise RuntimeError(f"measuring {folder} failed (exit code {child.returncode})")
    # Ray may echo worker output after the result: take the last line that is the result.
    for line in reversed(lines):
        if line.startswith("{"):
            result = json.loads(line)
            if "peak_mb" in result:
                return result
    raise RuntimeError(f"measuring {folder} printed no result")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--small", type=int, default=2000, help="train images, small set")
    parser.add_argument("--large", type=int, default=20000, help="train images, large set")
    parser.add_argument("--size", type=int, default=64, help="image side and crop, pixels")
    parser.add_argument("--batch-size", type=int, default=32, help="consumer batch size")
    parser.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--work", type=Path, default=Path("/tmp/wsss-bench-stream"), help="data set folder"
    )
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: one size
    args = parser.parse_args()

    if args.one is not None:
        print(json.dumps(stream_once(args.one, args.size, args.batch_size, args.interval)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    folders = {
        "small": prepare_dataset(args.work, args.small, args.size, args.seed),
        "large": prepare_dataset(args.work, args.large, args.size, args.seed),
    }
    results = {}
    for name, folder in folders.items():
        print(
            f"streaming the {name} set ({folder.name}) in a fresh process and cluster", flush=True
        )
        results[name] = measure_in_subprocess(folder, args)

    small, large = results["small"], results["large"]
    result = {
        "rss_small_mb": round(small["peak_mb"], 1),
        "rss_large_mb": round(large["peak_mb"], 1),
        "ratio": round(large["peak_mb"] / small["peak_mb"], 3),
        "images_small": small["images"],
        "images_large": large["images"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
