"""The algorithms in `wsss.stages` are plain PyTorch/NumPy: no stage imports Ray, MLflow or the
platform that wires stages to them."""

import ast
from pathlib import Path

import pytest

import wsss.stages

FORBIDDEN = ("ray", "mlflow", "wsss.platform", "wsss.cli", "wsss.cluster", "wsss.tune_spaces")
STAGES = Path(wsss.stages.__file__).parent


def forbidden_imports(source: str) -> list[str]:
    """The modules `source` imports (at any depth of its code) that a stage may not."""
    imported = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.append(node.module)
    return [
        name
        for name in imported
        if any(name == root or name.startswith(f"{root}.") for root in FORBIDDEN)
    ]


def test_the_check_finds_every_kind_of_import():
    source = (
        "import ray.data\nimport numpy\nfrom mlflow import log_metric\n"
        "def f():\n    from wsss.platform.config import CRFConfig\n"
        "from rayleigh import x\n"
    )
    assert forbidden_imports(source) == ["ray.data", "mlflow", "wsss.platform.config"]


@pytest.mark.parametrize(
    "module", sorted(STAGES.rglob("*.py")), ids=lambda path: str(path.relative_to(STAGES))
)
def test_a_stage_imports_no_ray_mlflow_or_platform(module: Path):
    assert forbidden_imports(module.read_text()) == []
