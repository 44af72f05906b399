"""summary(): totals against counts written out from the spec, and the accounting rules."""
import json

import pytest
import mxnet as mx
from mxnet.gluon import nn

from bmxnet_ext.apps.cli import main
from bmxnet_ext.binary.layers import QConv2D, QDense
from bmxnet_ext.model_zoo import get_model
from bmxnet_ext.binary.summary import layer_table, summary


def _meliusnet_counts(blocks, transitions, groups, classes=1000):
    """Counts of a MeliusNet with the grouped stem at 224x224, from DESIGN.md's description."""
    counts = dict(binary=0, float=0, bops=0, flops=0)
    # grouped stem: 3x3/2 conv 3->32, 3x3 conv 32->32 in 4 groups, 3x3 conv 32->64 in 8 groups,
    # all at 112x112; three BNs (gamma, beta)
    stem = [32 * 3 * 9, 32 * (32 // 4) * 9, 64 * (32 // 8) * 9]
    counts["float"] += sum(stem) + 2 * (32 + 32 + 64)
    counts["flops"] += 112 * 112 * sum(stem)
    widths = [64] + [out for _, out in transitions]
    sizes = [56, 28, 14, 7]
    for stage, num_blocks in enumerate(blocks):
        c = widths[stage]
        for _ in range(num_blocks):
            # DenseBlock reads c channels, ImprovementBlock c + 64; each: BN + 64 3x3 filters
            for read in (c, c + 64):
                counts["binary"] += 64 * read * 9
                counts["bops"] += 64 * read * 9 * sizes[stage] ** 2
                counts["float"] += 2 * read
            c += 64
        if stage < len(transitions):
            c_in, c_out = transitions[stage]
            assert c_in == c
            # BN, then the 1x1 conv after the 2x2 max pool
            counts["float"] += 2 * c_in + c_out * c_in // groups
            counts["flops"] += (sizes[stage] // 2) ** 2 * c_out * c_in // groups
    counts["float"] += 2 * c + c * classes + classes  # head: BN, Dense with bias
    counts["fc"] = c * classes
    return counts


@pytest.mark.parametrize("name,blocks,transitions,groups", [
    ("meliusnet22", (4, 5, 4, 4), ((320, 160), (480, 224), (480, 256)), 1),
    ("meliusnet_a", (4, 5, 5, 6), ((320, 160), (480, 256), (576, 288)), 4),
    ("meliusnet_c", (3, 5, 10, 6), ((256, 128), (448, 192), (832, 288)), 4),
])
def test_totals_equal_a_count_from_the_spec(name, blocks, transitions, groups):
    expected = _meliusnet_counts(blocks, transitions, groups)
    totals = summary(get_model(name), (1, 3, 224, 224), print_table=False)
    assert totals["binary_params"] == expected["binary"]
    assert totals["float_params"] == expected["float"]
    assert totals["params"] == expected["binary"] + expected["float"]
    assert totals["bops"] == expected["bops"]
    assert totals["flops"] == expected["flops"]
    assert totals["fc_flops"] == expected["fc"]
    assert totals["size_mib"] == pytest.approx(
        (expected["binary"] + 32 * expected["float"]) / 8 / 2 ** 20)
    assert totals["ops"] == pytest.approx(expected["bops"] / 64 + expected["flops"])
    assert totals["ops_with_fc"] == pytest.approx(totals["ops"] + expected["fc"])


def test_meliusnet22_is_close_to_the_paper():
    # MeliusNet paper: 3.9 MB, 4.62e9 BOPs, 1.35e8 FLOPs (its table rounds), 2.08e8 OPs
    totals = summary(get_model("meliusnet22"), (1, 3, 224, 224), print_table=False)
    assert totals["size_mib"] == pytest.approx(3.9, abs=0.05)
    assert totals["ops"] == pytest.approx(2.08e8, rel=0.01)


def _small_net():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, strides=2, padding=1, groups=2, in_channels=4, use_bias=True),
            nn.BatchNorm(in_channels=8),
            QConv2D(16, 3, padding=1, in_channels=8),
            nn.GlobalAvgPool2D(),
            QDense(5, in_units=16),
            nn.Dense(3, in_units=5))
    return net


def test_a_small_network_counted_by_hand():
    totals = summary(_small_net(), (3, 4, 10, 10), print_table=False)
    # conv: 8 * (4/2) * 9 weights + 8 biases at 5x5 output (stride 2); BN: gamma, beta only;
    # binary conv 16 * 8 * 9 at 5x5; binary dense 16 -> 5; float dense 5 -> 3 with bias
    assert totals["binary_params"] == 16 * 8 * 9 + 16 * 5
    assert totals["float_params"] == 8 * 2 * 9 + 8 + 2 * 8 + 5 * 3 + 3
    assert totals["flops"] == 8 * 5 * 5 * 2 * 9
    assert totals["bops"] == 16 * 5 * 5 * 8 * 9
    assert (totals["fc_bops"], totals["fc_flops"]) == (16 * 5, 5 * 3)
    assert totals["size_bytes"] == (1232 + 32 * 186) / 8
    assert totals["ops"] == 16 * 5 * 5 * 8 * 9 / 64 + 8 * 5 * 5 * 2 * 9
    assert totals["ops_with_fc"] == totals["ops"] + 80 / 64 + 15


def test_layer_rows_name_each_counted_layer():
    rows = layer_table(_small_net(), (1, 4, 10, 10))
    assert [(r["name"], r["type"]) for r in rows] == [
        ("0", "conv"), ("1", "BatchNorm"), ("2", "binary conv"), ("3", "GlobalAvgPool2D"),
        ("4", "binary dense"), ("5", "dense")]
    assert rows[0]["output_shape"] == (1, 8, 5, 5)


def test_initialized_hybridized_and_fresh_networks_count_the_same():
    fresh = summary(get_model("resnet_e18", input_size=32), (1, 3, 32, 32), print_table=False)
    net = get_model("resnet_e18", input_size=32)
    net.initialize()
    net.hybridize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    assert summary(net, (1, 3, 32, 32), print_table=False) == fresh


def test_packed_file_size_is_reported(tmp_path):
    packed = tmp_path / "net-0000.params"
    packed.write_bytes(b"\0" * 1234)
    totals = summary(_small_net(), (1, 4, 10, 10), print_table=False,
                     packed_params_file=str(packed))
    assert totals["packed_file_bytes"] == 1234


def test_table_prints_layers_and_totals(capsys):
    totals = summary(_small_net(), (1, 4, 10, 10))
    out = capsys.readouterr().out
    assert "binary conv" in out and "GlobalAvgPool2D" in out
    assert f"{totals['binary_params']:,}" in out
    assert "OPs          4.050e+03" in out


@pytest.mark.parametrize("shape", [(3,), (1, 4, 0, 10)])
def test_bad_input_shapes_are_refused(shape):
    with pytest.raises(ValueError, match="input_shape"):
        summary(_small_net(), shape, print_table=False)


def test_an_input_the_network_cannot_take_is_refused():
    with pytest.raises(ValueError, match="does not accept input_shape"):
        summary(_small_net(), (1, 5, 10, 10), print_table=False)


def test_transposed_convolutions_are_refused():
    with pytest.raises(ValueError, match="transposed"):
        summary(nn.Conv2DTranspose(4, 3, in_channels=4), (1, 4, 8, 8), print_table=False)


def test_packed_networks_are_refused():
    class Packed(nn.HybridBlock):
        def __init__(self):
            super().__init__()
            self.packed_weight = self.params.get("packed_weight", shape=(4, 1), dtype="int32")

        def hybrid_forward(self, F, x, packed_weight):
            return x

    with pytest.raises(ValueError, match="before convert_to_xnor"):
        summary(Packed(), (1, 4), print_table=False)


def test_cli_prints_the_totals_as_json(capsys):
    assert main(["summary", "meliusnet22", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert {"params", "binary_params", "float_params", "size_mib", "bops", "flops",
            "ops"} <= set(totals)
    assert totals["binary_params"] == _meliusnet_counts(
        (4, 5, 4, 4), ((320, 160), (480, 224), (480, 256)), 1)["binary"]
