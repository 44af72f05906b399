# distutils: language = c++
"""numpy bindings to the C++ kernels in src/kernels/ (the same code the bmx_* ops run).

Packed words are returned as int32 arrays holding the raw bits of the kernels' uint32 words, the
dtype MXNet stores them in.
"""
import numpy as np

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "kernels/bitpack.h" namespace "bmx":
    int64_t words_for_channels(int64_t channels)
    void pack_nchw(const float* x, int64_t n, int64_t c, int64_t h, int64_t w,
                   uint32_t* out) nogil
    void unpack_to_nchw(const uint32_t* inp, int64_t n, int64_t c, int64_t h, int64_t w,
                        float* out) nogil


def _as_nchw(x, name):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have rank 4 (N, C, H, W), got shape {x.shape}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one channel, got shape {x.shape}")
    return np.ascontiguousarray(x)


def pack_bits(x):
    """Packs float32 ``x`` (N, C, H, W) into int32 words (N, H, W, ceil(C/32)), bit = x >= 0."""
    x = _as_nchw(x, "x")
    cdef int64_t n = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3]
    out = np.empty((n, h, w, words_for_channels(c)), dtype=np.int32)
    if out.size == 0:
        return out
    cdef float[:, :, :, ::1] xv = x
    cdef int[:, :, :, ::1] ov = out
    with nogil:
        pack_nchw(&xv[0, 0, 0, 0], n, c, h, w, <uint32_t*>&ov[0, 0, 0, 0])
    return out


def unpack_bits(packed, int channels):
    """Inverse of :func:`pack_bits`: int32 words (N, H, W, words) -> float32 ±1 (N, C, H, W)."""
    packed = np.asarray(packed)
    if packed.dtype != np.int32 or packed.ndim != 4:
        raise ValueError(f"packed must be an int32 array of rank 4 (N, H, W, words), "
                         f"got {packed.dtype} {packed.shape}")
    if channels <= 0 or words_for_channels(channels) != packed.shape[3]:
        raise ValueError(f"channels={channels} does not fit {packed.shape[3]} words per pixel")
    packed = np.ascontiguousarray(packed)
    cdef int64_t n = packed.shape[0], h = packed.shape[1], w = packed.shape[2]
    cdef int64_t c = channels
    out = np.empty((n, channels, h, w), dtype=np.float32)
    if out.size == 0:
        return out
    cdef int[:, :, :, ::1] pv = packed
    cdef float[:, :, :, ::1] ov = out
    with nogil:
        unpack_to_nchw(<const uint32_t*>&pv[0, 0, 0, 0], n, c, h, w, &ov[0, 0, 0, 0])
    return out


# ----------------------------------------------------------------------------------------------
# Binary convolution and dense layers (src/kernels/binary_conv.h, binary_dense.h)

cdef extern from "kernels/bitpack.h" namespace "bmx":
    bint tail_bits_clear(const uint32_t* packed, int64_t vectors, int64_t channels) nogil

cdef extern from "kernels/xnor_popcount.h" namespace "bmx":
    cdef enum class OutputMode(int):
        kAgreements
        kDot
        kScaledDot

cdef extern from "kernels/isa.h" namespace "bmx":
    cdef enum class Isa(int):
        kScalar
        kAvx2
        kAvx512
    const char* isa_name(Isa isa)
    bint cpu_supports(Isa isa)
    Isa active_isa()
    Isa set_isa_c "bmx::set_isa"(Isa requested)
    bint parse_isa(const char* text, Isa* isa)
    const char* kernel_name_c "bmx::kernel_name"()

cdef extern from "kernels/binary_conv.h" namespace "bmx":
    cdef cppclass ConvParams:
        int64_t batch, in_channels, in_h, in_w
        int64_t out_channels, kernel_h, kernel_w
        int64_t stride_h, stride_w, pad_h, pad_w, dilate_h, dilate_w, groups
        bint pad_with_ones
        int64_t out_h() const
        int64_t out_w() const
        int64_t packed_input_words() const
    void pack_conv_weights_c "bmx::pack_conv_weights"(
        const float* w, int64_t out_channels, int64_t group_in_channels, int64_t kernel_h,
        int64_t kernel_w, uint32_t* out) nogil
    void binary_conv2d_c "bmx::binary_conv2d"(
        const float* x, const uint32_t* weights, const ConvParams& p, OutputMode mode,
        const float* scale, uint32_t* scratch, float* out) nogil

cdef extern from "kernels/binary_dense.h" namespace "bmx":
    void pack_dense_weights_c "bmx::pack_dense_weights"(
        const float* w, int64_t units, int64_t in_units, uint32_t* out) nogil
    int64_t dense_scratch_words(int64_t batch, int64_t in_units)
    void binary_dense_c "bmx::binary_dense"(
        const float* x, const uint32_t* weights, int64_t batch, int64_t in_units, int64_t units,
        OutputMode mode, const float* scale, uint32_t* scratch, float* out) nogil


ISAS = ("scalar", "avx2", "avx512")


def kernel_name():
    """Name of the xnor-popcount inner loop in use, e.g. ``"avx512-vpopcntdq"``."""
    return kernel_name_c().decode()


def supported_isas():
    """The instruction-set paths this CPU can run, from ``ISAS``."""
    return tuple(name for name in ISAS if cpu_supports(_isa(name)))


def active_isa_name():
    """The path the kernels of this module use: ``"scalar"``, ``"avx2"`` or ``"avx512"``."""
    return isa_name(active_isa()).decode()


cdef Isa _isa(name) except *:
    cdef Isa isa
    if not isinstance(name, str) or not parse_isa(name.encode(), &isa):
        raise ValueError(f"isa must be one of {ISAS}, got {name!r}")
    return isa


def set_isa(name):
    """Makes this module's kernels use instruction set ``name`` (see ``ISAS``); one this CPU lacks
    falls back to the best it has below it, with a warning on stderr. Returns the previous path.

    The environment variable ``BMXNET_ISA`` sets the same for a whole process, the op library
    included (which keeps its own choice: this function affects this module only).
    """
    previous = active_isa_name()
    set_isa_c(_isa(name))
    return previous


def _float32_array(x, name, ndim, layout):
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} ({layout}), got shape {x.shape}")
    return np.ascontiguousarray(x)


def _packed_array(w, name, ndim, layout):
    w = np.asarray(w)
    if w.dtype != np.int32:
        raise TypeError(f"{name} must be int32 packed words (from pack_*_weights), got {w.dtype}")
    if w.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim} ({layout}), got shape {w.shape}")
    if 0 in w.shape:
        raise ValueError(f"{name} must not be empty, got shape {w.shape}")
    return np.ascontiguousarray(w)


def _int_pair(value, name, lowest):
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if (len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              for v in pair) or min(pair) < lowest):
        raise ValueError(f"{name} must be an int >= {lowest} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _output_mode(offset, scale, int units):
    """The OutputMode and float32 scale vector (a dummy unless scaling) of a binary layer."""
    if scale is None:
        return (OutputMode.kAgreements if offset else OutputMode.kDot,
                np.zeros(1, dtype=np.float32))
    scale = np.asarray(scale)
    if not np.issubdtype(scale.dtype, np.floating):
        raise TypeError(f"scale must be a float array, got {scale.dtype}")
    if scale.shape != (units,):
        raise ValueError(f"scale must have shape ({units},), one value per output, got "
                         f"{scale.shape}")
    return OutputMode.kScaledDot, np.ascontiguousarray(scale, dtype=np.float32)


def pack_conv_weights(w, int groups=1):
    """Packs float32 OIHW latent weights into the layout of the binary convolution kernel.

    ``w`` has shape ``(C_out, C_in / groups, kh, kw)`` (the ``nn.Conv2D`` weight); bit = w >= 0.
    Returns int32 words ``(C_out, kh, kw, ceil(C_in / groups / 32))``: per output channel and
    kernel tap, the input channels of its group, bit ``c % 32`` of word ``c // 32``, tails 0.
    """
    w = _float32_array(w, "w", 4, "C_out, C_in / groups, kh, kw")
    if 0 in w.shape:
        raise ValueError(f"w must not be empty, got shape {w.shape}")
    if groups < 1 or w.shape[0] % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide C_out={w.shape[0]}")
    cdef int64_t o = w.shape[0], c = w.shape[1], kh = w.shape[2], kw = w.shape[3]
    out = np.empty((o, kh, kw, words_for_channels(c)), dtype=np.int32)
    cdef float[:, :, :, ::1] wv = w
    cdef int[:, :, :, ::1] ov = out
    with nogil:
        pack_conv_weights_c(&wv[0, 0, 0, 0], o, c, kh, kw, <uint32_t*>&ov[0, 0, 0, 0])
    return out


def binary_conv2d(x, weights, stride=1, pad=0, dilate=1, int groups=1, offset=True, scale=None,
                  pad_value=-1):
    """Binary 2-D convolution of float32 NCHW ``x`` with packed ``weights`` (xnor-popcount).

    Computes QConv2D on signs: ``x`` is binarized (x >= 0 -> +1, else -1; NaN -> -1), padded with
    ``pad_value`` (-1 or +1), and convolved with the ±1 weights packed by
    :func:`pack_conv_weights` over ``K = C_in / groups * kh * kw`` taps. Returns float32
    ``(N, C_out, H_out, W_out)``: ``(dot + K) / 2`` (``offset=True``), ``dot``
    (``offset=False``) or ``dot * scale[c_out]`` (``scale`` given, float ``(C_out,)``).
    ``stride``, ``pad`` and ``dilate`` are ints or (height, width) pairs.
    """
    x = _float32_array(x, "x", 4, "N, C, H, W")
    weights = _packed_array(weights, "weights", 4, "C_out, kh, kw, words")
    if x.shape[1] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"x must have at least one channel, row and column, got shape {x.shape}")
    cdef ConvParams p
    p.batch, p.in_channels, p.in_h, p.in_w = x.shape
    p.out_channels, p.kernel_h, p.kernel_w = weights.shape[:3]
    p.stride_h, p.stride_w = _int_pair(stride, "stride", 1)
    p.pad_h, p.pad_w = _int_pair(pad, "pad", 0)
    p.dilate_h, p.dilate_w = _int_pair(dilate, "dilate", 1)
    if groups < 1 or p.in_channels % groups or p.out_channels % groups:
        raise ValueError(f"groups={groups} must be >= 1 and divide both the input channels "
                         f"C={p.in_channels} and the output channels C_out={p.out_channels}")
    p.groups = groups
    cdef int64_t group_channels = p.in_channels // groups
    if weights.shape[3] != words_for_channels(group_channels):
        raise ValueError(
            f"weights {weights.shape} hold {weights.shape[3]} words per tap, but x has "
            f"{p.in_channels} channels in {groups} group(s), i.e. {group_channels} channels = "
            f"{words_for_channels(group_channels)} words per tap")
    cdef int[:, :, :, ::1] wv = weights
    if not tail_bits_clear(<const uint32_t*>&wv[0, 0, 0, 0],
                           p.out_channels * p.kernel_h * p.kernel_w, group_channels):
        raise ValueError(f"weights have bits set past {group_channels} channels per group: they "
                         "were packed for a different channel count than x has")
    if pad_value not in (-1, 1):
        raise ValueError(f"pad_value must be -1 or +1, got {pad_value!r}")
    p.pad_with_ones = pad_value == 1
    if p.out_h() < 1 or p.out_w() < 1:
        raise ValueError(
            f"the dilated kernel ({p.kernel_h}, {p.kernel_w}) with dilate=({p.dilate_h}, "
            f"{p.dilate_w}) does not fit the padded input ({p.in_h + 2 * p.pad_h}, "
            f"{p.in_w + 2 * p.pad_w})")
    mode, scale = _output_mode(offset, scale, p.out_channels)
    out = np.empty((p.batch, p.out_channels, p.out_h(), p.out_w()), dtype=np.float32)
    if p.batch == 0:
        return out
    scratch = np.empty(p.packed_input_words(), dtype=np.int32)
    cdef float[:, :, :, ::1] xv = x
    cdef float[::1] sv = scale
    cdef int[::1] scratch_v = scratch
    cdef float[:, :, :, ::1] ov = out
    cdef OutputMode c_mode = mode
    with nogil:
        binary_conv2d_c(&xv[0, 0, 0, 0], <const uint32_t*>&wv[0, 0, 0, 0], p, c_mode, &sv[0],
                        <uint32_t*>&scratch_v[0], &ov[0, 0, 0, 0])
    return out


def pack_dense_weights(w):
    """Packs float32 latent weights ``(units, in_units)`` (the ``nn.Dense`` weight), bit = w >= 0.

    Returns int32 words ``(units, ceil(in_units / 32))``: input ``k`` at bit ``k % 32`` of word
    ``k // 32``, tails 0.
    """
    w = _float32_array(w, "w", 2, "units, in_units")
    if 0 in w.shape:
        raise ValueError(f"w must not be empty, got shape {w.shape}")
    cdef int64_t units = w.shape[0], in_units = w.shape[1]
    out = np.empty((units, words_for_channels(in_units)), dtype=np.int32)
    cdef float[:, ::1] wv = w
    cdef int[:, ::1] ov = out
    with nogil:
        pack_dense_weights_c(&wv[0, 0], units, in_units, <uint32_t*>&ov[0, 0])
    return out


def binary_dense(x, weights, in_units=None, offset=True, scale=None):
    """Binary fully connected layer: float32 ``x`` (N, ...) times packed ``weights``.

    ``x`` is flattened to ``(N, K)`` as ``nn.Dense`` does and binarized (x >= 0 -> +1); its ±1 dot
    product with each row of the weights packed by :func:`pack_dense_weights` is returned as
    float32 ``(N, units)``: ``(dot + K) / 2``, ``dot`` (``offset=False``) or ``dot * scale``.
    ``in_units``, when given, must equal K (a check that the weights fit the input).
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"x must be float32, got {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (N, features...), got shape {x.shape}")
    x = np.ascontiguousarray(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))))
    weights = _packed_array(weights, "weights", 2, "units, words")
    cdef int64_t batch = x.shape[0], k = x.shape[1], units = weights.shape[0]
    if k == 0:
        raise ValueError("x must have at least one feature per row")
    if in_units is not None and in_units != k:
        raise ValueError(f"in_units={in_units} but x has {k} features per row")
    if weights.shape[1] != words_for_channels(k):
        raise ValueError(f"weights {weights.shape} hold {weights.shape[1]} words per unit, but x "
                         f"has {k} features = {words_for_channels(k)} words")
    cdef int[:, ::1] wv = weights
    if not tail_bits_clear(<const uint32_t*>&wv[0, 0], units, k):
        raise ValueError(f"weights have bits set past {k} inputs: they were packed for a "
                         "different input size than x has")
    mode, scale = _output_mode(offset, scale, units)
    out = np.empty((batch, units), dtype=np.float32)
    if batch == 0:
        return out
    scratch = np.empty(dense_scratch_words(batch, k), dtype=np.int32)
    cdef float[:, ::1] xv = x
    cdef float[::1] sv = scale
    cdef int[::1] scratch_v = scratch
    cdef float[:, ::1] ov = out
    cdef OutputMode c_mode = mode
    with nogil:
        binary_dense_c(&xv[0, 0], <const uint32_t*>&wv[0, 0], batch, k, units, c_mode, &sv[0],
                       <uint32_t*>&scratch_v[0], &ov[0, 0])
    return out


# ----------------------------------------------------------------------------------------------
# Threads (src/kernels/parallel.h): this module's kernels run on their own pool; the op library
# keeps another (bmxnet_ext.kernels.set_num_threads sets both).

cdef extern from "kernels/parallel.h" namespace "bmx":
    int num_threads_c "bmx::num_threads"() nogil
    int set_num_threads_c "bmx::set_num_threads"(int n) nogil
    int64_t pool_jobs() nogil


def num_threads():
    """The most threads this module's kernels use: set by :func:`set_num_threads`, else by
    ``OMP_NUM_THREADS``, else the CPUs this process may run on."""
    return num_threads_c()


def set_num_threads(n):
    """Makes this module's kernels use up to ``n`` threads (an int >= 1), or with ``None`` what
    ``OMP_NUM_THREADS`` (else the CPU count) says. Returns the previous count."""
    if n is None:
        return set_num_threads_c(0)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 or None, got {n!r}")
    return set_num_threads_c(<int>min(int(n), 1 << 20))


def _pool_jobs():
    """For tests: how many jobs this module's pool has run on more than one thread."""
    return pool_jobs()


# ----------------------------------------------------------------------------------------------
# For benchmarks: the clock the kernels run at (a VM's /proc/cpuinfo may not say).

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    /* Seconds for `n` iterations of a chain of dependent one-cycle additions. */
    static double bmx_dependent_adds_seconds(uint64_t n) {
        struct timespec a, b;
        uint64_t x = 0;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (uint64_t i = 0; i < n; ++i) {
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__aarch64__))
            __asm__ volatile("" : "+r"(x));
    #endif
            x += 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        if (x != n) return -1.0;
        return (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
    }
    """
    double bmx_dependent_adds_seconds(uint64_t n) nogil


def measured_clock_mhz(int trials=5, uint64_t additions=100000000):
    """The core clock in MHz, measured: the best of ``trials`` runs of ``additions`` dependent
    one-cycle integer additions (a lower bound when other processes take the core)."""
    cdef double best = 0.0, seconds
    for _ in range(trials):
        with nogil:
            seconds = bmx_dependent_adds_seconds(additions)
        if seconds > 0:
            best = max(best, additions / seconds / 1e6)
    return best
