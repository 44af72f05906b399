"""Failing calls of the bmx_* operators: each error carries its own message only, and many
failures neither slow the process down nor grow its memory.

MXNet 1.9.1 never clears an extension library's error list and copies (leaking the copies) every
message in it on each later failure, so without care the n-th failure costs O(n) time and memory:
3 000 bad calls grew a process by 4 GiB. The op library keeps only the newest failure's messages.
"""
import os
import subprocess
import sys

import mxnet as mx
import pytest

import bmxnet_ext  # noqa: F401  (loads the operators)

_REPEATED_FAILURES = r"""
import os
import mxnet as mx
import bmxnet_ext

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

weight = mx.nd.zeros((4, 1, 1, 1), dtype="int32")
def fail(i):
    try:
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, 5, 3, 3)), weight, kernel=1, num_filter=4,
                                in_channels=8 + i % 2).wait_to_read()
    except mx.base.MXNetError as err:
        return str(err)
    raise SystemExit("no error raised")

for i in range(300):
    fail(i)
before = rss()
for i in range(1500):
    message = fail(i)
print(rss() - before, len(message), message.count("bmx_binary_conv2d: input 'data' has 5"))
"""


def test_repeated_failures_keep_one_message_and_do_not_grow_memory(tmp_path):
    result = subprocess.run([sys.executable, "-c", _REPEATED_FAILURES], capture_output=True,
                            text=True, timeout=600, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    growth, length, copies = (int(v) for v in result.stdout.split())
    assert copies == 1, f"the last error carries {copies} messages (of earlier failures)"
    assert length < 2000
    assert growth < 16 * 2 ** 20, f"1500 failing calls grew the process by {growth} bytes"


@pytest.mark.parametrize("in_channels", [8, 9])
def test_error_message_names_the_current_failure_only(in_channels):
    weight = mx.nd.zeros((4, 1, 1, 1), dtype="int32")
    for channels in (6, 7, 5):
        with pytest.raises(mx.base.MXNetError) as info:
            mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, channels, 3, 3)), weight, kernel=1,
                                    num_filter=4, in_channels=in_channels).wait_to_read()
    message = str(info.value)
    assert f"input 'data' has 5 channels but in_channels={in_channels}" in message
    assert "has 6 channels" not in message and "has 7 channels" not in message


def test_a_failure_does_not_break_later_calls():
    weight = mx.nd.zeros((4, 1, 1, 1), dtype="int32")
    with pytest.raises(mx.base.MXNetError):
        mx.nd.bmx_binary_conv2d(mx.nd.zeros((1, 5, 3, 3)), weight, kernel=1, num_filter=4,
                                in_channels=8).wait_to_read()
    y = mx.nd.bmx_binary_conv2d(mx.nd.ones((1, 8, 3, 3)), weight, kernel=1, num_filter=4,
                                in_channels=8)
    assert (y.asnumpy() == 0).all()  # all-ones input vs all-zero-bit (-1) weights: 0 agreements


def test_sanitizer_environment_is_not_required_here():
    """The suite runs against the installed library unless BMXNET_OPS_LIBRARY says otherwise."""
    from bmxnet_ext.inference import ops
    named = os.environ.get("BMXNET_OPS_LIBRARY")
    assert ops.LIBRARY_PATH == (named or ops.INSTALLED_LIBRARY)
