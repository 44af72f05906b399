"""Float references of the binary kernels and the cases both kernel test files run.

The reference is the training layers' definition on signs, in float64 (every value is an integer,
so it is exact): sign(x) (x >= 0 -> +1, NaN -> -1), padded with -1 (or +1) after binarization,
convolved with sign(W); the output is (dot + K) / 2, dot, or dot * scale in float32.
"""
import numpy as np
import pytest


def sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _finish(dot, fan_in, offset, scale, channel_axis):
    if scale is not None:
        shape = [1] * dot.ndim
        shape[channel_axis] = -1
        return dot.astype(np.float32) * np.asarray(scale, np.float32).reshape(shape)
    return ((dot + fan_in) / 2 if offset else dot).astype(np.float32)


def conv2d(x, w, stride=1, pad=0, dilate=1, groups=1, offset=True, scale=None, pad_value=-1):
    """Binary conv of float NCHW x with float OIHW latent weights w, on signs."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(pad), _pair(dilate)
    xs = np.pad(sign(x), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    ws = sign(w)
    n, _, hp, wp = xs.shape
    c_out, group_in, kh, kw = ws.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    group_out = c_out // groups
    dot = np.zeros((n, c_out, ho, wo))
    for g in range(groups):
        xg = xs[:, g * group_in:(g + 1) * group_in]
        wg = ws[g * group_out:(g + 1) * group_out]
        for ky in range(kh):
            for kx in range(kw):
                patch = xg[:, :, ky * dh:ky * dh + sh * (ho - 1) + 1:sh,
                           kx * dw:kx * dw + sw * (wo - 1) + 1:sw]
                dot[:, g * group_out:(g + 1) * group_out] += np.einsum(
                    "nchw,oc->nohw", patch, wg[:, :, ky, kx])
    return _finish(dot, group_in * kh * kw, offset, scale, 1)


def dense(x, w, offset=True, scale=None):
    """Binary dense of float x (N, ...) flattened with float latent weights (units, K)."""
    dot = sign(x.reshape(x.shape[0], -1)) @ sign(w).T
    return _finish(dot, w.shape[1], offset, scale, 1)


def random_floats(shape, seed):
    """Normal floats with exact zeros, -0.0 and NaN sprinkled in, to exercise the sign rule."""
    rng = np.random.RandomState(seed)
    x = rng.randn(*shape).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size >= 8:
        picks = rng.choice(flat.size, size=max(3, flat.size // 50), replace=False)
        thirds = np.array_split(picks, 3)
        flat[thirds[0]] = 0.0
        flat[thirds[1]] = -0.0
        flat[thirds[2]] = np.nan
    return x


# --- the test matrix: each axis is crossed with one base case, plus combined cases ------------

BASE_CONV = dict(n=1, c=33, h=7, w=9, c_out=6, k=3, stride=1, pad=1, dilate=1, groups=1)


def _conv(**changes):
    case = dict(BASE_CONV, **changes)
    ident = "-".join(f"{key}{value}" for key, value in changes.items()) or "base"
    return pytest.param(case, id=ident.replace(" ", ""))


CONV_CASES = (
    [_conv()]
    + [_conv(k=k, pad=p) for k, p in [(1, 0), (1, 1), (3, 0), (5, 2), (5, 0)]]
    + [_conv(stride=2), _conv(stride=(1, 2)), _conv(stride=3, k=1, pad=0)]
    + [_conv(dilate=2), _conv(dilate=(2, 1), pad=2)]
    + [_conv(c=c, groups=g, c_out=8) for c, g in [(100, 2), (100, 4), (64, 2), (64, 4),
                                                 (66, 2), (4, 4), (132, 4)]]
    + [_conv(c=c) for c in [1, 31, 32, 64, 100]]
    + [_conv(c=1856, h=3, w=5, k=k, pad=k // 2) for k in (1, 3)]
    + [_conv(n=3), _conv(n=3, c=32)]
    + [_conv(h=1, w=1, k=1, pad=0), _conv(h=5, w=3), _conv(h=13, w=11), _conv(h=4, w=4, pad=0)]
    + [_conv(pad=2), _conv(pad=(0, 2)), _conv(pad=(2, 0), k=5)]
    + [_conv(c_out=1), _conv(c_out=70, h=9, w=9)]  # past the 64-channel and 64-pixel blocks
    + [  # combined
        _conv(n=3, c=100, h=9, w=11, c_out=8, k=5, stride=2, pad=2, dilate=2, groups=4),
        _conv(n=3, c=66, h=7, w=7, c_out=12, k=3, stride=2, pad=1, dilate=1, groups=2),
        _conv(n=2, c=31, h=11, w=5, c_out=5, k=3, stride=(2, 1), pad=(0, 1), dilate=(1, 2)),
        _conv(n=1, c=1856, h=5, w=5, c_out=16, k=3, stride=2, pad=1, groups=4),
        _conv(n=3, c=64, h=15, w=15, c_out=64, k=3, stride=1, pad=1),
    ]
)

OUTPUT_MODES = [
    pytest.param(dict(offset=True, scale=False), id="offset"),
    pytest.param(dict(offset=False, scale=False), id="dot"),
    pytest.param(dict(offset=True, scale=True), id="scaled"),
]

BASE_DENSE = dict(n=3, k=100, units=10)


def _dense(**changes):
    case = dict(BASE_DENSE, **changes)
    ident = "-".join(f"{key}{value}" for key, value in changes.items()) or "base"
    return pytest.param(case, id=ident)


DENSE_CASES = (
    [_dense()]
    + [_dense(k=k) for k in [1, 31, 32, 33, 64, 1856]]
    + [_dense(units=u) for u in [1, 4, 5, 64, 65]]
    + [_dense(n=n) for n in [1, 70]]
    + [_dense(n=70, k=1856, units=130)]
)
