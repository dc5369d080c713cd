"""Error bounds for float32 parity tests, derived from the arithmetic instead of one CPU's luck.

Two float32 evaluations of the same network (another kernel, BN folded or not, NCHW or channels_last, ONNX
Runtime, OpenVINO, oneDNN's AVX2 vs AVX-512 vs AMX kernels, which block and order their reductions
differently) agree only up to rounding. Each layer rounds its sums of products to float32, a relative error
of a few units in the last place (ulp, ``eps`` = 2**-23 = 1.19e-7) of the layer's output scale, and the
errors carry through the layers that follow, roughly adding up with depth. So the bound on a logit is

    |float32 - exact| <= ULPS_PER_LAYER * eps * depth * max|logits|

Measured with ``tests/test_models.py``'s torchvision comparison (float32 against the same network in float64,
v3_299, 48 layers on the deepest path, logits up to 9): 2.1e-4, about 4 ulps per layer, on AVX2 and AVX-512
CPUs alike; the bare ``1e-4`` tests had before was under that, passing where kernels happened to round
favourably. ``ULPS_PER_LAYER`` = 16 leaves a factor of 4 and is still about 1e-4 of the logits' scale: a real
difference (a wrong stem, a BN folded with the wrong eps, mean/std swapped) moves logits by whole units.

A float64 reference carries no rounding of its own; a float32 one does, so two float32 results may differ
by twice the bound (each is within it of the exact value).
"""
import torch

FP32_EPS = torch.finfo(torch.float32).eps
ULPS_PER_LAYER = 16
# Convolutions on Inception-v3's deepest path (stem 5, Mixed_5b-d 3 each, Mixed_6a 3, Mixed_6b-e 5 each,
# Mixed_7a 4, Mixed_7b-c 3 each) plus the fc: 48, the same for the three stems.
INCEPTION_DEPTH = 48


def fp32_bound(reference: torch.Tensor, depth: int = INCEPTION_DEPTH, ulps: int = ULPS_PER_LAYER) -> float:
    """The bound above for outputs whose scale is ``max |reference|`` (a float64 reference: one side rounds;
    float32: both do, so twice as much)."""
    sides = 1 if reference.dtype == torch.float64 else 2
    return sides * ulps * FP32_EPS * depth * float(reference.abs().max())


def assert_fp32_close(got: torch.Tensor, reference: torch.Tensor, depth: int = INCEPTION_DEPTH, what: str = "") -> float:
    """``got`` (float32) is ``reference`` up to float32 rounding through ``depth`` layers; returns max |Δ|."""
    assert got.shape == reference.shape, (what, got.shape, reference.shape)
    diff = float((got.double() - reference.double().to(got.device)).abs().max())
    bound = fp32_bound(reference, depth)
    assert diff <= bound, (f"{what}: max |Δ| {diff:.3g} > {bound:.3g} ({ULPS_PER_LAYER} ulps x {depth} layers x "
                           f"scale {float(reference.abs().max()):.3g})")
    return diff


def softmax_bound(reference_logits: torch.Tensor, depth: int = INCEPTION_DEPTH) -> float:
    """Probabilities move at most half as much as the logits do (the softmax's Jacobian diag(p) - pp^T has
    rows summing in absolute value to 2 p_i (1 - p_i) <= 1/2), so their bound follows the logits'."""
    return 0.5 * fp32_bound(reference_logits, depth)
