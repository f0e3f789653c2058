"""Random-walk propagation of class activation maps within class boundaries (IRNet inference).

IRNet squares a dense ``N × N`` transition matrix ``exp_times`` times (N = pixels of the feature
map), which costs O(N³) time and O(N²) memory. The matrix is sparse (pairs within the search
radius only), so here it stays sparse and the ``2**exp_times`` steps of the walk are applied
one by one to the ``[N, C]`` maps: time and memory linear in N, same result.
"""

import warnings

import torch
import torch.nn.functional as F

from wsss.stages.irnet.path_index import INFERENCE_RADIUS, PathIndex, boundary_to_affinity


def pair_affinities(
    boundary: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair of pixels closer than ``radius``, listed once, with its affinity.

    Args:
        boundary: float ``[height, width]`` in [0, 1].
        radius: pairs with squared distance below ``radius²`` (>= 2).

    Returns:
        ``(src, dst, affinity)``: flat row-major pixel indices, int64 ``[P]`` each, and
        ``1 - max(boundary on the path)`` in [0, 1], ``[P]`` in the boundary's dtype.
    """
    height, width = boundary.shape
    margin = radius - 1
    # IRNet's pair layout leaves out sources near the border. Padding by that margin makes every
    # pixel a source; pairs ending in the padding are dropped, so its value never matters.
    path_index = PathIndex(radius, (height + margin, width + 2 * margin))
    padded = F.pad(boundary, (margin, margin, 0, margin), value=1.0)
    affinity = boundary_to_affinity(padded[None], path_index)[0]

    padded_dst = torch.as_tensor(path_index.dst_indices, device=boundary.device)
    dst_row = padded_dst // (width + 2 * margin)
    dst_col = padded_dst % (width + 2 * margin) - margin
    inside = (dst_row < height) & (dst_col >= 0) & (dst_col < width)
    # The padded layout's sources are exactly the image's pixels, in raster order.
    src = torch.arange(height * width, device=boundary.device).expand_as(padded_dst)
    return src[inside], (dst_row * width + dst_col)[inside], affinity[inside]


def _transition_matrix(boundary: torch.Tensor, radius: int, beta: float) -> torch.Tensor:
    """Row-stochastic sparse CSR ``[N, N]``: ``D⁻¹ A`` with ``A = affinity**beta``, symmetric,
    ones on the diagonal, and ``D`` the row sums of ``A`` (never zero thanks to the diagonal)."""
    n_pixels = boundary.numel()
    src, dst, affinity = pair_affinities(boundary, radius)
    weight = affinity.pow(beta)
    diagonal = torch.arange(n_pixels, device=boundary.device)
    rows = torch.cat([src, dst, diagonal])
    cols = torch.cat([dst, src, diagonal])
    values = torch.cat([weight, weight, torch.ones_like(diagonal, dtype=weight.dtype)])
    degree = torch.zeros(n_pixels, dtype=weight.dtype, device=weight.device)
    degree.index_add_(0, rows, values)
    matrix = torch.sparse_coo_tensor(
        torch.stack([rows, cols]),
        values / degree[rows],
        (n_pixels, n_pixels),
        check_invariants=False,
    ).coalesce()
    # CSR products are much faster than COO ones on CPU; torch flags CSR as beta on creation.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.to_sparse_csr()


def propagate(
    cams: torch.Tensor,
    boundary: torch.Tensor,
    radius: int = INFERENCE_RADIUS,
    beta: float = 10.0,
    exp_times: int = 8,
) -> torch.Tensor:
    """Spread each class map over the pixels it reaches without crossing a boundary.

    Same result as IRNet's ``propagate_to_edge``: affinities ``(1 - max boundary on the path)
    ** beta`` for pixel pairs closer than ``radius``, made symmetric, plus the identity, divided
    by their column sums into a transition matrix ``T``; the output is
    ``(cams * (1 - boundary)) @ T ** (2 ** exp_times)`` over flattened pixels. As ``A`` is
    symmetric that is ``2 ** exp_times`` steps of ``x ← D⁻¹ A x``, computed in float64.

    Args:
        cams: float ``[C, height, width]``, class activation maps (>= 0) at the boundary's
            resolution.
        boundary: float ``[height, width]``, class boundary probability in [0, 1].
        radius: pairs with squared distance below ``radius²`` are connected (>= 2).
        beta: exponent sharpening affinities (> 0).
        exp_times: the walk takes ``2 ** exp_times`` steps.

    Returns:
        ``[C, height, width]`` in ``cams``' dtype and device; each value is a weighted mean of the
        masked CAM values, so the range of ``cams * (1 - boundary)`` is kept. No gradient.
    """
    if cams.ndim != 3 or boundary.shape != cams.shape[1:]:
        raise ValueError(
            f"expected cams [C, h, w] and boundary [h, w], got {cams.shape} and {boundary.shape}"
        )
    n_classes, height, width = cams.shape
    with torch.no_grad():
        boundary64 = boundary.to(torch.float64)
        transition = _transition_matrix(boundary64, radius, beta)
        walked = (cams.to(torch.float64) * (1 - boundary64)).reshape(n_classes, -1).T.contiguous()
        for _ in range(2**exp_times):
            walked = transition @ walked
    return walked.T.reshape(n_classes, height, width).to(cams.dtype)
