"""Concurrent inference on one converted model from several Python threads: every call returns
what the training network returns for its input (batch sizes mixed, threads released together),
for the converter's output (imperative, hybridized, fused) and for the reloaded export
(load_xnor). Failing calls in some threads do not disturb the others. (Gluon's own
SymbolBlock.imports is not tested: shared by threads it deadlocks MXNet 1.9.1 even for float
networks, see bmxnet_ext.inference.threads.)
"""
import mxnet as mx
import numpy as np
import pytest

from bmxnet_ext import convert_to_xnor, load_xnor, model_zoo
from thread_helpers import run_in_threads
from conftest import trained_like

THREADS, CALLS = 4, 25
SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def trained():
    """A meliusnet_flex with non-trivial BatchNorm statistics and the inputs and outputs of the
    training network for 12 inputs of batch sizes 1 to 3."""
    net = model_zoo.get_model("meliusnet_flex", classes=10, input_size=32, blocks=(1, 1, 1, 1))
    rng = np.random.RandomState(0)
    trained_like(net, SHAPE, rng=rng)
    inputs = [rng.standard_normal((1 + i % 3,) + SHAPE[1:]).astype(np.float32)
              for i in range(12)]
    expected = [net(mx.nd.array(x)).asnumpy() for x in inputs]
    return net, inputs, expected


def _exported(net, tmp_path):
    packed = convert_to_xnor(net, input_shape=SHAPE)
    packed.hybridize()
    packed(mx.nd.zeros(SHAPE))
    packed.export(str(tmp_path / "packed"))
    return str(tmp_path / "packed")


def _converted(net, tmp_path, hybridize=True, fuse=False):
    packed = convert_to_xnor(net, input_shape=SHAPE, fuse=fuse)
    if hybridize:
        packed.hybridize()
    return packed


MODELS = {
    "converted-imperative": lambda net, tmp: _converted(net, tmp, hybridize=False),
    "converted-hybridized": lambda net, tmp: _converted(net, tmp),
    "converted-fused": lambda net, tmp: _converted(net, tmp, fuse=True),
    "load_xnor": lambda net, tmp: load_xnor(_exported(net, tmp)),
}


def _run_threads(work):
    return run_in_threads(work, THREADS)


def _close(actual, expected):
    return actual.shape == expected.shape and np.allclose(actual, expected, rtol=1e-5,
                                                          atol=1e-4)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_threads_sharing_one_packed_model_get_the_training_outputs(trained, kind, tmp_path):
    net, inputs, expected = trained
    model = MODELS[kind](net, tmp_path)

    def work(thread):
        wrong = []
        for call in range(CALLS):
            i = (thread * 5 + call) % len(inputs)
            if not _close(model(mx.nd.array(inputs[i])).asnumpy(), expected[i]):
                wrong.append((thread, call, i))
        return wrong

    wrong = [w for per_thread in _run_threads(work) for w in per_thread]
    assert not wrong, f"{len(wrong)} of {THREADS * CALLS} calls returned wrong outputs: {wrong[:5]}"


def test_failing_calls_in_some_threads_leave_the_others_correct(trained, tmp_path):
    """Threads 0 and 1 feed a wrong channel count (a shape error), threads 2 and 3 valid inputs,
    all at once, on one reloaded model."""
    net, inputs, expected = trained
    model = load_xnor(_exported(net, tmp_path))
    bad = mx.nd.zeros((1, 5, 32, 32))

    def work(thread):
        outcomes = []
        for call in range(CALLS):
            if thread < 2:
                try:
                    model(bad).wait_to_read()
                    outcomes.append("no error")
                except mx.base.MXNetError:
                    # MXNet's message names the stem's shape the first time; its CachedOp then
                    # remembers the failed shape and says "Cannot find attribute shape".
                    outcomes.append("refused")
            else:
                i = (thread + call) % len(inputs)
                ok = _close(model(mx.nd.array(inputs[i])).asnumpy(), expected[i])
                outcomes.append("ok" if ok else f"wrong output for input {i}")
        return outcomes

    results = _run_threads(work)
    assert all(o == "refused" for per_thread in results[:2] for o in per_thread), results[:2]
    assert all(o == "ok" for per_thread in results[2:] for o in per_thread), results[2:]
