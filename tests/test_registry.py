"""The model registry: keyed by function name, duplicates refused, None kwargs dropped,
helpful errors for unknown names, pattern listing."""
import pytest

from bmxnet_ext.apps.cli import main
from bmxnet_ext.model_zoo import _registry, get_model, list_models, register_model


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so test registrations do not leak."""
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))
    return _registry._MODELS


def test_the_key_is_the_function_name(registry):
    @register_model
    def tiny_test_net(**kwargs):
        return ("built", kwargs)

    assert "tiny_test_net" in list_models()
    assert get_model("tiny_test_net", classes=3) == ("built", {"classes": 3})


def test_a_second_model_of_the_same_name_is_refused(registry):
    def meliusnet22(**kwargs):
        return None

    with pytest.raises(ValueError, match="'meliusnet22' is already registered"):
        register_model(meliusnet22)
    assert registry["meliusnet22"] is not meliusnet22


def test_none_keyword_arguments_are_dropped(registry):
    @register_model
    def recording_net(classes=1000, stem="grouped_stem"):
        return classes, stem

    assert get_model("recording_net", classes=None, stem=None) == (1000, "grouped_stem")
    assert get_model("recording_net", classes=10, stem=None) == (10, "grouped_stem")


def test_none_arguments_keep_a_zoo_model_default():
    net = get_model("meliusnet_flex", classes=None, stem=None, input_size=None)
    assert (net.classes, net.stem_name) == (1000, "grouped_stem")


@pytest.mark.parametrize("name,suggestion", [
    ("meliusnet23", "meliusnet22"),
    ("resnet_e19", "resnet_e18"),
    ("MeliusNet_A", "meliusnet_a"),
    ("densenet28", "binary_densenet28"),
])
def test_unknown_names_get_close_matches(name, suggestion):
    with pytest.raises(ValueError, match=f"unknown model '{name}'; did you mean .*{suggestion}"):
        get_model(name)


def test_an_unknown_name_with_nothing_close_lists_the_zoo():
    with pytest.raises(ValueError, match="known models: binary_densenet28, .*resnet_e34"):
        get_model("xq")


@pytest.mark.parametrize("pattern,count", [
    (None, 18), ("meliusnet*", 8), ("meliusnet_?", 3), ("*_flex", 3), ("resnet_e*", 2),
    ("quicknet*", 4), ("vgg*", 0),
])
def test_list_models_filters_by_pattern(pattern, count):
    names = list_models(pattern)
    assert len(names) == count and names == sorted(names)


def test_cli_reports_an_unknown_model_in_one_line(capsys):
    assert main(["summary", "meliusnet23"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bmxnet-ext summary: error: unknown model 'meliusnet23'; did you mean")
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["meliusnet_flex", "binary_densenet_flex", "quicknet_flex"])
def test_flex_constructors_have_no_pretrained_weights(name):
    with pytest.raises(ValueError, match=f"{name} has no pretrained weights"):
        get_model(name, pretrained=True)
