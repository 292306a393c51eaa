"""One validation of numeric options and shapes (``resnet_deploy.options``, ``resnet_deploy.shapes``)."""

from __future__ import annotations

import argparse

import pytest

from resnet_deploy import options, shapes
from resnet_deploy.errors import UsageError


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "-1", "0", "soon", ""])
def test_positive_float_refuses_nan_inf_and_non_positive(text):
    with pytest.raises(argparse.ArgumentTypeError, match="finite number > 0"):
        options.positive_float(text)


def test_numeric_types_accept_what_they_should():
    assert options.positive_float("0.5") == 0.5
    assert options.non_negative_float("0") == 0.0
    assert options.positive_int(" 7 ") == 7
    assert options.batch_size("4096") == 4096
    assert options.percentile("100") == 100.0
    assert options.fraction("1") == 1.0


@pytest.mark.parametrize("fn, text, message", [
    (options.threads, "-4", ">= 1, got -4"),
    (options.threads, "0", ">= 1, got 0"),
    (options.threads, "two", "expected an integer >= 1, got 'two'"),
    (options.batch_size, "4097", "<= 4096"),
    (options.percentile, "0", "> 0 and <= 100"),
    (options.fraction, "1.5", ">= 0 and <= 1"),
])
def test_integer_and_range_types_name_the_rule(fn, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        fn(text)


def test_library_checks_share_the_rules():
    assert options.check_threads(None) is None and options.check_threads(3) == 3
    for bad in (-4, 0, 2.5, "x", True):
        with pytest.raises(UsageError, match="threads must be an integer >= 1"):
            options.check_threads(bad)
    with pytest.raises(UsageError, match="finite"):
        options.check_float(float("nan"), "--checkpoint-every", 0, min_open=True)
    assert options.check_float(60, "--checkpoint-every", 0, min_open=True) == 60.0


@pytest.mark.parametrize("text, message", [
    ("foo", "bad shape 'foo'"),
    ("0x3x224x224", "bad shape '0x3x224x224'"),
    ("1x3x224", "bad shape"),
    ("1x3x8x8", "too small for the network"),
    ("1x3x224x31", "at least 32"),
    ("1x4x64x64", "must be Nx3xHxW"),
    ("5000x3x64x64", "batch must be between 1 and 4096"),
    ("1x3x9000x64", "at most 8192"),
    (",", "bad shape list"),
])
def test_input_shapes_one_rule_for_every_command(text, message):
    with pytest.raises(UsageError, match=message):
        shapes.input_shapes(text)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        options.input_shapes(text)


def test_input_shapes_parse():
    assert shapes.input_shapes("1x3x224x224, 2X3x32x48") == ((1, 3, 224, 224), (2, 3, 32, 48))
    assert shapes.input_shape("8*3*64*64") == (8, 3, 64, 64)
    assert shapes.parse_shapes("224x224", rank=2) == ((224, 224),)
