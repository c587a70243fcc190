"""Python face of the ``fastrader::sparse_attn_*`` ops.

Loads the compiled extension ``fastrader._C`` (which registers the schemas and
the device kernels), registers the fake (meta) kernels for torch.compile and
the autograd formula, and validates every argument before it reaches C++ so
that mistakes come back as one-line Python errors.
"""

import math
import numbers
import sys

import torch

from fastrader.errors import FastraderError

try:  # importing the library runs its TORCH_LIBRARY registrations
    from fastrader import _C  # noqa: F401

    _LOAD_ERROR = None
except ImportError as exc:  # not built, or built against another torch: kept, reported on use
    _LOAD_ERROR = exc

HEAD_DIM_RANGE = (8, 128)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_INT_MAX = 2**62  # window, dilation, sinks and window * dilation all fit in int64


class AttentionArgumentError(FastraderError, ValueError):
    """Bad shape, device or window/dilation/sinks/scale for sparse attention."""


class AttentionTypeError(FastraderError, TypeError):
    """Sparse attention got a non-tensor or a dtype it does not support."""


def available():
    """True when the compiled extension ``fastrader._C`` could be imported."""
    return _LOAD_ERROR is None


def load_error():
    """The ImportError raised by ``import fastrader._C``, or None when it loaded."""
    return _LOAD_ERROR


def load_error_line():
    """The load error as one line, e.g. for a warning ('' when it loaded)."""
    if _LOAD_ERROR is None:
        return ""
    return " ".join(f"{type(_LOAD_ERROR).__name__}: {_LOAD_ERROR}".split())


_warned = False


def warn_fallback(backend="sdpa"):
    """Prints, once per process, one stderr line saying that the extension did
    not load, why, and which backend runs instead (``--attention auto``)."""
    global _warned
    if _LOAD_ERROR is None or _warned:
        return
    _warned = True
    print(
        f"warning: fastrader._C did not load ({load_error_line()}); attention runs on the slower "
        f"{backend} backend (see `fastrader doctor`)",
        file=sys.stderr,
    )


def _kernel_devices():
    # Looked up once at import: torch.compile cannot trace the dispatcher query.
    if _LOAD_ERROR is not None:
        return frozenset()
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return frozenset(dev for dev, key in keys.items() if has("fastrader::sparse_attn_fwd", key))


_KERNEL_DEVICES = _kernel_devices()


BACKENDS = ("cpu", "cuda-wgmma", "cuda-mma", "cuda-scalar")


def _build_has_sm90a():
    """True when fastrader._C carries sm_90a code (setup.py builds the 9.0 code as sm_90a)."""
    archs = _C.build_info().get("cuda_archs", "") if _LOAD_ERROR is None else ""
    return any(a.strip().split("+")[0] in ("9.0", "9.0a") for a in archs.replace(" ", ";").split(";"))


def can_run(backend, q, window=256, dilation=1, sinks=0):
    """Whether ``backend`` computes sparse attention for ``q``: ``(ok, reason)``.

    Backends: ``"cpu"`` (the C++ kernels), ``"cuda-wgmma"`` (the Hopper
    forward: what ``cuda-mma`` takes, head dim 64 or 128, compute capability
    9.0, a build with sm_90a code, dilation 1; the forward of such calls runs
    it unless ``FASTRADER_CUDA_FWD=mma``, their backward stays ``cuda-mma``),
    ``"cuda-mma"`` (the tensor-core kernels: float16/bfloat16, head dim <= 128,
    compute capability >= 8.0, and ``FASTRADER_CUDA_KERNEL`` not set to
    ``scalar``) and ``"cuda-scalar"`` (every dtype; the CUDA op uses it
    whenever ``cuda-mma`` cannot run). Mirrors the dispatch in
    ext/csrc/cuda/sparse_attention_cuda.cu, mma_supported() in fwd_mma.cu and
    wgmma_refusal() in fwd_wgmma_sm90.cu (which also refuses a device whose
    shared memory per block is too small). window and sinks restrict no
    backend today.
    """
    import os

    if backend not in BACKENDS:
        return False, f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}"
    if _LOAD_ERROR is not None:
        return False, f"the extension fastrader._C is not built ({_LOAD_ERROR})"
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        return False, "q must be a 4-D tensor (batch, heads, seq, head_dim)"
    lo, hi = HEAD_DIM_RANGE
    if not lo <= q.shape[-1] <= hi:
        return False, f"head_dim {q.shape[-1]} outside [{lo}, {hi}]"
    if q.dtype not in _DTYPES:
        return False, f"dtype {q.dtype} not supported"
    want = "cpu" if backend == "cpu" else "cuda"
    if q.device.type != want:
        return False, f"{backend} needs a {want} tensor, got {q.device}"
    if want not in _KERNEL_DEVICES:
        return False, f"fastrader._C was built without {want} kernels"
    if backend in ("cuda-mma", "cuda-wgmma"):
        if q.dtype not in (torch.float16, torch.bfloat16):
            return False, f"tensor-core kernels take float16/bfloat16, got {q.dtype} (cuda-scalar runs it)"
        if q.shape[-1] > 128:
            return False, f"tensor-core kernels take head_dim <= 128, got {q.shape[-1]}"
        major, minor = torch.cuda.get_device_capability(q.device)
        if major < 8:
            return False, f"tensor-core kernels need compute capability >= 8.0, device has {major}.{minor}"
        if os.environ.get("FASTRADER_CUDA_KERNEL") == "scalar":
            return False, "FASTRADER_CUDA_KERNEL=scalar forces the scalar kernels"
    if backend == "cuda-wgmma":
        if q.shape[-1] not in (64, 128):
            return False, f"the wgmma forward takes head_dim 64 or 128, got {q.shape[-1]}"
        if not _build_has_sm90a():
            return False, "this build of fastrader._C has no sm_90a code (TORCH_CUDA_ARCH_LIST without 9.0)"
        if (major, minor) != (9, 0):
            return False, f"the wgmma forward needs compute capability 9.0 (sm_90a), device has {major}.{minor}"
        if min(int(dilation), q.shape[-2]) != 1:
            return False, f"the wgmma forward takes dilation 1, got {dilation} (cuda-mma runs it)"
    return True, "ok"


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AttentionTypeError(f"sparse_attention: {name} must be an int, got {type(value).__name__}")
    if not minimum <= value <= _INT_MAX:
        raise AttentionArgumentError(f"sparse_attention: {name} must be in [{minimum}, 2**62], got {value}")
    return int(value)


def check_inputs(q, k, v, window, dilation, sinks, scale):
    """Validates the arguments; returns (window, dilation, sinks, scale) normalised.

    Raises AttentionTypeError (a TypeError) or AttentionArgumentError (a
    ValueError), both FastraderError, naming the argument at fault.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise AttentionTypeError(f"sparse_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise AttentionArgumentError(
            f"sparse_attention: q must be 4-D (batch, heads, seq, head_dim), got shape {tuple(q.shape)}"
        )
    if k.shape != q.shape or v.shape != q.shape:
        raise AttentionArgumentError(
            "sparse_attention: q, k, v must have the same shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.dtype not in _DTYPES:
        raise AttentionTypeError(
            f"sparse_attention: dtype must be float32, float64, bfloat16 or float16, got {q.dtype}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise AttentionTypeError(
            f"sparse_attention: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if k.device != q.device or v.device != q.device:
        raise AttentionArgumentError(
            f"sparse_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}"
        )
    if q.device.type not in _KERNEL_DEVICES:
        raise AttentionArgumentError(f"sparse_attention: no kernel for device {q.device} (CPU only for now)")
    lo, hi = HEAD_DIM_RANGE
    if not lo <= q.shape[-1] <= hi:
        raise AttentionArgumentError(f"sparse_attention: head_dim must be in [{lo}, {hi}], got {q.shape[-1]}")
    window = _check_int("window", window, 1)
    dilation = _check_int("dilation", dilation, 1)
    sinks = _check_int("sinks", sinks, 0)
    if window * dilation > _INT_MAX:  # a kernel may form the span window * dilation
        raise AttentionArgumentError(
            f"sparse_attention: window * dilation must be <= 2**62, got {window} * {dilation}"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise AttentionTypeError(f"sparse_attention: scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise AttentionArgumentError(f"sparse_attention: scale must be finite, got {scale}")
    return window, dilation, sinks, scale


def _require_library():
    if _LOAD_ERROR is not None:
        raise FastraderError(
            "sparse_attention: the extension fastrader._C is not built "
            f"({_LOAD_ERROR}); run `FASTRADER_BUILD=torch python setup.py build_ext --inplace`"
        )


def sparse_attention_with_lse(q, k, v, window=256, dilation=1, sinks=0, scale=None):
    """Like :func:`sparse_attention` but also returns the row log-sum-exp (B, H, N).

    lse is float64 for float64 inputs and float32 otherwise; it is differentiable.
    """
    _require_library()
    window, dilation, sinks, scale = check_inputs(q, k, v, window, dilation, sinks, scale)
    return torch.ops.fastrader.sparse_attn_fwd(q, k, v, window, dilation, sinks, scale)


def sparse_attention(q, k, v, window=256, dilation=1, sinks=0, scale=None):
    """Causal sliding-window attention with dilation and sink tokens.

    q, k, v: (batch, heads, seq, head_dim), float32/float64/bfloat16/float16
    (half precision accumulates in float32; on CUDA it runs on tensor cores,
    see :func:`can_run`). Query i attends key j iff j <= i and
    ((i - j) < window * dilation and (i - j) % dilation == 0, or j < sinks).
    ``scale`` defaults to 1/sqrt(head_dim). Differentiable in q, k, v.
    """
    return sparse_attention_with_lse(q, k, v, window, dilation, sinks, scale)[0]


def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


if available():

    @torch.library.register_fake("fastrader::sparse_attn_fwd")
    def _fwd_fake(q, k, v, window, dilation, sinks, scale):
        out = q.new_empty(q.shape)
        lse = q.new_empty(q.shape[:-1], dtype=_lse_dtype(q.dtype))
        return out, lse

    @torch.library.register_fake("fastrader::sparse_attn_bwd")
    def _bwd_fake(grad_out, q, k, v, out, lse, window, dilation, sinks, scale, grad_lse=None):
        return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)

    def _setup_context(ctx, inputs, output):
        q, k, v, window, dilation, sinks, scale = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.params = (window, dilation, sinks, scale)

    def _backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = torch.ops.fastrader.sparse_attn_bwd(grad_out, q, k, v, out, lse, *ctx.params, grad_lse)
        return dq, dk, dv, None, None, None, None

    torch.library.register_autograd("fastrader::sparse_attn_fwd", _backward, setup_context=_setup_context)


# ---- single-query decode over a ring-buffer KV cache (bar-by-bar inference) ----------


def _decode_kernel_devices():
    if _LOAD_ERROR is not None:
        return frozenset()
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return frozenset(dev for dev, key in keys.items() if has("fastrader::sparse_attn_decode", key))


_DECODE_DEVICES = _decode_kernel_devices()


def decode_cache_slots(window, dilation=1, sinks=0):
    """Slots a decode cache needs: the sink keys, then one ring of window * dilation."""
    return int(sinks) + int(window) * int(dilation)


def check_decode_inputs(q, k_cache, v_cache, pos, window, dilation, sinks, scale):
    """Validates :func:`sparse_attention_decode`'s arguments; returns (window, dilation, sinks, scale)."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("pos", pos)):
        if not isinstance(t, torch.Tensor):
            raise AttentionTypeError(f"sparse_attention_decode: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 3:
        raise AttentionArgumentError(
            f"sparse_attention_decode: q must be 3-D (batch, heads, head_dim), got shape {tuple(q.shape)}"
        )
    window = _check_int("window", window, 1)
    dilation = _check_int("dilation", dilation, 1)
    sinks = _check_int("sinks", sinks, 0)
    B, H, D = q.shape
    slots = sinks + window * dilation
    want = (B, H, slots, D)
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if tuple(t.shape) != want:
            raise AttentionArgumentError(
                f"sparse_attention_decode: {name} must have shape (batch, heads, sinks + window*dilation, head_dim) "
                f"= {want}, got {tuple(t.shape)}"
            )
    if q.dtype not in _DTYPES:
        raise AttentionTypeError(
            f"sparse_attention_decode: dtype must be float32, float64, bfloat16 or float16, got {q.dtype}"
        )
    if k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise AttentionTypeError(
            "sparse_attention_decode: q, k_cache, v_cache must share one dtype, got "
            f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if pos.dtype != torch.int64 or tuple(pos.shape) != (B,):
        raise AttentionArgumentError(
            f"sparse_attention_decode: pos must be an int64 tensor of shape ({B},), got {pos.dtype} {tuple(pos.shape)}"
        )
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("pos", pos)):
        if t.device != q.device:
            raise AttentionArgumentError(
                f"sparse_attention_decode: {name} is on {t.device}, q on {q.device}; all must be on one device"
            )
    lo, hi = HEAD_DIM_RANGE
    if not lo <= D <= hi:
        raise AttentionArgumentError(f"sparse_attention_decode: head_dim must be in [{lo}, {hi}], got {D}")
    if q.device.type == "cpu" and B and int(pos.min()) < 0:  # free on CPU; on a GPU it would be a sync
        raise AttentionArgumentError(f"sparse_attention_decode: pos must be >= 0, got {int(pos.min())}")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise AttentionTypeError(f"sparse_attention_decode: scale must be a float or None, got {type(scale).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise AttentionArgumentError(f"sparse_attention_decode: scale must be finite, got {scale}")
    return window, dilation, sinks, scale


def decode_slot_mask(pos, window, dilation, sinks):
    """(B, slots) bool: which cache slots the query at each ``pos`` sees (the op's exact rule)."""
    span = window * dilation
    slot = torch.arange(sinks + span, device=pos.device)
    p = pos[:, None]
    sink = (slot[None, :] < sinks) & (slot[None, :] <= p)
    # ring slot r holds the newest key j >= sinks with j mod span == r, i.e. j = p - ((p - r) mod span)
    r = (slot - sinks)[None, :]
    back = torch.remainder(p - r, span)
    j = p - back
    ring = (slot[None, :] >= sinks) & (j >= sinks) & (back % dilation == 0) & (back < span)
    return sink | ring


def _decode_torch(q, k_cache, v_cache, pos, window, dilation, sinks, scale):
    """Plain PyTorch decode (any device): the fallback where no kernel is registered."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    mask = decode_slot_mask(pos, window, dilation, sinks)  # (B, S)
    s = torch.einsum("bhd,bhsd->bhs", q.to(work), k_cache.to(work)) * scale
    s = s.masked_fill(~mask[:, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    v = v_cache.to(work).masked_fill(~mask[:, None, :, None], 0.0)  # unused slots may hold anything
    return torch.einsum("bhs,bhsd->bhd", p, v).to(q.dtype)


def sparse_attention_decode(q, k_cache, v_cache, pos, window, dilation=1, sinks=0, scale=None):
    """Attention of one new query per sequence over a ring-buffer KV cache.

    q: (batch, heads, head_dim); k_cache, v_cache: (batch, heads, sinks +
    window*dilation, head_dim); pos: (batch,) int64, each query's position,
    whose own key is already written to the cache. Slots [0, sinks) hold the
    keys of positions 0..sinks-1; a key at position j >= sinks lives in slot
    sinks + (j mod window*dilation). The result equals row ``pos`` of
    :func:`sparse_attention` over the full sequence. Uses the compiled kernel
    of q's device when there is one, else a plain PyTorch path.
    """
    window, dilation, sinks, scale = check_decode_inputs(q, k_cache, v_cache, pos, window, dilation, sinks, scale)
    if q.device.type in _DECODE_DEVICES:
        return torch.ops.fastrader.sparse_attn_decode(q, k_cache, v_cache, pos, window, dilation, sinks, scale)
    return _decode_torch(q, k_cache, v_cache, pos, window, dilation, sinks, scale)


if available():

    @torch.library.register_fake("fastrader::sparse_attn_decode")
    def _decode_fake(q, k_cache, v_cache, pos, window, dilation, sinks, scale):
        return q.new_empty(q.shape)
