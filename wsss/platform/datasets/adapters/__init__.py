"""Adapters from known on-disk layouts to the manifest + class list.

Each adapter reads a layout and proposes `Candidate` rows; `import_dataset` validates them
with `check_candidates` and writes the dataset folder. An adapter never stops at one bad
file: it marks the candidate with the problem and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsss.platform.datasets.adapters import folder, lid, voc  # noqa: F401  (they register)
from wsss.platform.datasets.adapters.common import get_adapter
from wsss.platform.datasets.manifest import (
    REJECTED_FILE,
    DatasetError,
    DatasetInfo,
    ManifestRow,
    Reject,
    check_candidates,
    write_dataset,
)


def import_dataset(
    fmt: str,
    src: Path,
    out: Path,
    name: str | None = None,
    workers: int = 1,
    strict: bool = False,
    **options: Any,
) -> tuple[DatasetInfo, list[ManifestRow], list[Reject]]:
    """Read `src` in layout `fmt`, validate every row, and write the dataset folder `out`.

    The good rows and the rejects (with reasons) are always written; with `strict`, any
    reject then raises `DatasetError`.
    """
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src} is not a folder")
    adapter = get_adapter(fmt)
    try:
        output = adapter(src, **options)
    except TypeError as exc:
        raise DatasetError(f"format {fmt!r}: bad option ({exc})") from None
    rows, rejects = check_candidates(src, output.classes, output.candidates, workers=workers)
    info = DatasetInfo(
        name=name or src.resolve().name, format=fmt, root=src, classes=output.classes
    )
    write_dataset(Path(out), info, rows, rejects)
    if strict and rejects:
        listed = "\n  ".join(f"{r.file}: {r.reason}" for r in rejects[:20])
        raise DatasetError(
            f"--strict: {len(rejects)} row(s) rejected (all of them in "
            f"{Path(out) / REJECTED_FILE}):\n  {listed}"
        )
    return info, rows, rejects
