# distutils: language = c++
"""numpy bindings to the C++ kernels in src/kernels/ (the same code the bmx_* ops run).

Packed words are returned as int32 arrays holding the raw bits of the kernels' uint32 words, the
dtype MXNet stores them in.
"""
import numpy as np

from libc.stdint cimport int64_t, uint32_t


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
