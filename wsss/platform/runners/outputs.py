"""What each step leaves in its folder for the steps after it, typed.

A step's folder (in the step store, linked from the run folder as `step1/`, `step2/`, `step3/`)
holds its files under the names below and a `summary.json` of its numbers; a later step reads
a step through its output object, never through a literal file name or summary key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The steps a run builds through the store, in order (each config section of that name).
PIPELINE_STEPS = ("step1", "step2", "step3")
CLASSIFIER_FILE = "classifier.pt"
CAM_DIR = "cams"
IR_LABEL_DIR = "ir_labels"
# Step 1's masks of the val and test images, drawn with their given labels, by Table 2 row.
CAM_MASK_DIRS = {"cam": "cam_masks", "cam_crf": "cam_crf_masks"}
IRNET_FILE = "irnet.pt"
PSEUDO_MASK_DIR = "pseudo_masks"
SEGMENTER_FILE = "segmenter.pt"


@dataclass(frozen=True)
class Step1Output:
    """Step 1: the classifier (`classifier.pt`, and `binary_<class>.pt` where merged), each
    image's CAMs (`cams/<id>.npz`), the train images' confident labels for IRNet
    (`ir_labels/<id>.png`), the CAM and CAM+CRF masks of the val and test images
    (`cam_masks/<id>.png`, `cam_crf_masks/<id>.png`), and the classifier's highest class
    score per train image (step 2's confidence filter)."""

    folder: Path
    train_top_scores: dict[str, float]

    @classmethod
    def of(cls, folder: Path, summary: dict[str, Any]) -> Step1Output:
        return cls(folder, summary["train_top_scores"])

    @property
    def classifier_file(self) -> Path:
        return self.folder / CLASSIFIER_FILE

    @property
    def cam_dir(self) -> Path:
        return self.folder / CAM_DIR

    @property
    def ir_label_dir(self) -> Path:
        return self.folder / IR_LABEL_DIR

    def mask_dir(self, row: str) -> Path:
        """The folder of the masks of Table 2's `row` ("cam" or "cam_crf")."""
        return self.folder / CAM_MASK_DIRS[row]


@dataclass(frozen=True)
class Step2Output:
    """Step 2: the trained IRNet (`irnet.pt`), the pseudo mask of every image with CAMs
    (`pseudo_masks/<id>.png`), and how many train images IRNet learned from."""

    folder: Path
    train_images: int

    @classmethod
    def of(cls, folder: Path, summary: dict[str, Any]) -> Step2Output:
        return cls(folder, summary["train_images"])

    @property
    def irnet_file(self) -> Path:
        return self.folder / IRNET_FILE

    @property
    def pseudo_mask_dir(self) -> Path:
        return self.folder / PSEUDO_MASK_DIR


@dataclass(frozen=True)
class Step3Output:
    """Step 3: the DeepLabV3+ of the best val epoch (`segmenter.pt`)."""

    folder: Path

    @classmethod
    def of(cls, folder: Path, summary: dict[str, Any] | None = None) -> Step3Output:
        return cls(folder)

    @property
    def segmenter_file(self) -> Path:
        return self.folder / SEGMENTER_FILE


@dataclass(frozen=True)
class RunOutputs:
    """The three steps' outputs of one run, as its report, figures and model are made from."""

    step1: Step1Output
    step2: Step2Output
    step3: Step3Output

    @classmethod
    def of(cls, folders: dict[str, Path], summaries: dict[str, dict[str, Any]]) -> RunOutputs:
        """The outputs of the step folders {"step1": folder, ...} with their summaries."""
        return cls(
            Step1Output.of(folders["step1"], summaries["step1"]),
            Step2Output.of(folders["step2"], summaries["step2"]),
            Step3Output.of(folders["step3"], summaries["step3"]),
        )
