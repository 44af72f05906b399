"""*_flex transition widths: our fraction rule and BMXNet-v2's divisor rule; named models keep
their widths."""
import pytest

from bmxnet_ext.binary.blocks import reduced_width, transition_width
from bmxnet_ext.model_zoo import get_model


@pytest.mark.parametrize("channels,reduction,rule,width", [
    (736, 2.7, "bmxnet_v2", 256),        # 736 // 2.7 = 272 -> 272 / 32 = 8.5 -> 8
    (736, 1 / 2.7, "fraction", 288),     # 736 / 2.7 / 32 = 8.52 -> 9
    (448, 2.5, "bmxnet_v2", 192), (960, 3, "bmxnet_v2", 320), (1856, 3.5, "bmxnet_v2", 544),
    (320, 2, "bmxnet_v2", 160), (320, 0.5, "fraction", 160),
])
def test_transition_width_rules(channels, reduction, rule, width):
    assert transition_width(channels, reduction, rule) == width


@pytest.mark.parametrize("name,rule,reductions,width", [
    ("meliusnet_flex", "bmxnet_v2", (2, 2.7), 256),
    ("meliusnet_flex", "fraction", (0.5, 1 / 2.7), 288),
    ("binary_densenet_flex", "bmxnet_v2", (2, 2.7), 256),
    ("binary_densenet_flex", "fraction", (0.5, 1 / 2.7), 288),
])
def test_flex_networks_take_bmxnet_v2_reductions(name, rule, reductions, width):
    # Stage 2 ends at 736 channels: 64 + 64*b1 = 320 -> 160; 160 + 64 * b2 = 736 (MeliusNet) or
    # the same with DenseBlocks only.
    net = get_model(name, blocks=(4, 9, 1), reductions=reductions, reduction_rule=rule,
                    stem="thumbnail", input_size=32, classes=10)
    assert net.transitions == ((320, 160), (736, width))


def test_meliusnet59_as_bmxnet_v2_ran_it_is_our_meliusnet59():
    # Run b32820e3...: meliusnet_flex --block-config 6,12,24,12 --reduction 2.5,3,3.5
    flex = get_model("meliusnet_flex", blocks=(6, 12, 24, 12), reductions=(2.5, 3, 3.5),
                     reduction_rule="bmxnet_v2")
    assert flex.transitions == get_model("meliusnet59").transitions


@pytest.mark.parametrize("name,widths", [
    ("meliusnet22", (160, 224, 256)), ("meliusnet29", (128, 192, 256)),
    ("meliusnet42", (160, 256, 416)), ("meliusnet59", (192, 320, 544)),
    ("meliusnet_a", (160, 256, 288)), ("meliusnet_b", (160, 224, 320)),
    ("meliusnet_c", (128, 192, 288)),
])
def test_named_meliusnets_keep_their_widths(name, widths):
    assert tuple(out for _, out in get_model(name).transitions) == widths


@pytest.mark.parametrize("name,divisors", [("binary_densenet28", (2.7, 2.7, 2.2)),
                                           ("binary_densenet37", (3.3, 3.3, 4)),
                                           ("binary_densenet45", (2.7, 3.3, 4))])
def test_named_binary_densenets_agree_under_both_rules(name, divisors):
    net = get_model(name)
    assert [out for _, out in net.transitions] == [
        transition_width(c, d, "bmxnet_v2") for (c, _), d in zip(net.transitions, divisors)]
    assert [out for _, out in net.transitions] == [
        reduced_width(c, 1 / d) for (c, _), d in zip(net.transitions, divisors)]


@pytest.mark.parametrize("rule,reduction,words", [("bmxnet", 2, "unknown reduction rule"),
                                                  ("bmxnet_v2", 0, "positive divisor"),
                                                  ("bmxnet_v2", 40, "at least 32")])
def test_bad_rules_and_divisors_are_refused(rule, reduction, words):
    with pytest.raises(ValueError, match=words):
        transition_width(320, reduction, rule)
