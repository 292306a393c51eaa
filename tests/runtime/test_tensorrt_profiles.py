"""Optimization profiles: parsing, defaults, validation (before any TensorRT work), check shapes."""

from __future__ import annotations

import pytest

from resnet_deploy.errors import UsageError
from resnet_deploy.runtime.tensorrt import BuildConfig, Profile, default_profiles, profiles_from_args, validate_profiles
from resnet_deploy.runtime.tensorrt.profiles import bounds, check_shapes, parse_shape


def test_parse_shape_and_errors():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(UsageError, match="bad shape '1x3x224'"):
        parse_shape("1x3x224")
    with pytest.raises(UsageError, match="bad shape '1x3xax224'"):
        parse_shape("1x3xax224")


def test_default_profile_covers_batch_1_to_32_and_128_to_512_px():
    (p,) = default_profiles()
    assert p.contains((1, 3, 128, 128)) and p.contains((32, 3, 512, 512)) and p.contains((8, 3, 224, 224))
    assert not p.contains((33, 3, 224, 224)) and not p.contains((1, 3, 127, 224)) and not p.contains((1, 3, 224, 513))
    assert p.opt == (8, 3, 224, 224)
    validate_profiles([p])


def test_profiles_from_repeated_flags():
    profiles = profiles_from_args(["1x3x128x128", "16x3x224x224"], ["4x3x224x224", "32x3x224x224"],
                                  ["8x3x256x256", "64x3x224x224"])
    assert profiles == [Profile((1, 3, 128, 128), (4, 3, 224, 224), (8, 3, 256, 256)),
                        Profile((16, 3, 224, 224), (32, 3, 224, 224), (64, 3, 224, 224))]
    assert profiles_from_args(None, None, None) == default_profiles()


def test_opt_defaults_to_the_default_opt_clamped_into_the_range():
    (p,) = profiles_from_args(["1x3x96x96"], None, ["4x3x160x160"])
    assert p.opt == (4, 3, 160, 160)
    (p,) = profiles_from_args(["1x3x128x128"], None, ["32x3x512x512"])
    assert p.opt == (8, 3, 224, 224)


def test_mismatched_flag_counts_name_the_counts():
    with pytest.raises(UsageError, match="got 2 --min-shape, 0 --opt-shape, 1 --max-shape"):
        profiles_from_args(["1x3x128x128", "1x3x128x128"], None, ["8x3x224x224"])


@pytest.mark.parametrize("lo, opt, hi, message", [
    ((1, 3, 224, 224), (1, 3, 128, 128), (1, 3, 256, 256), "height must satisfy min <= opt <= max, got 224, 128, 256"),
    ((4, 3, 224, 224), (2, 3, 224, 224), (8, 3, 224, 224), "batch must satisfy min <= opt <= max, got 4, 2, 8"),
    ((1, 3, 16, 16), (1, 3, 64, 64), (1, 3, 64, 64), "below the network's spatial minimum"),
    ((1, 1, 64, 64), (1, 1, 64, 64), (1, 1, 64, 64), "has 1 channels; the network takes 3"),
    ((1, 3, 64), (1, 3, 64), (1, 3, 64), "must have 4 dims"),
])
def test_validation_names_the_values(lo, opt, hi, message):
    with pytest.raises(UsageError, match=message):
        validate_profiles([Profile(lo, opt, hi)])


def test_validation_against_fixed_network_dims():
    p = Profile((1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224))
    validate_profiles([p], input_shape=[None, 3, 224, 224])
    with pytest.raises(UsageError, match="batch is fixed at 1"):
        validate_profiles([p], input_shape=[1, 3, None, None])


def test_check_shapes_are_min_opt_max_and_an_off_grid_one():
    p = Profile((1, 3, 128, 128), (8, 3, 224, 224), (32, 3, 512, 512))
    shapes = check_shapes(p)
    assert shapes[:3] == [p.min, p.opt, p.max]
    off = shapes[3]
    assert p.contains(off) and off not in shapes[:3]
    assert off[2] % 2 == 1 and off[3] % 32 != 0  # off every stride grid
    fixed = Profile((4, 3, 224, 224), (4, 3, 224, 224), (4, 3, 224, 224))
    assert check_shapes(fixed) == [(4, 3, 224, 224)]


def test_bounds_of_several_profiles():
    a = Profile((1, 3, 128, 128), (1, 3, 224, 224), (4, 3, 224, 224))
    b = Profile((8, 3, 224, 224), (16, 3, 224, 224), (32, 3, 512, 512))
    assert bounds([a, b]) == ((1, 3, 128, 128), (32, 3, 512, 512))


def test_build_config_from_cli_options_and_validation(tmp_path):
    cfg = BuildConfig.from_options(min_shapes=["1x3x64x64"], max_shapes=["2x3x96x96"], workspace_gib=2,
                                   timing_cache=str(tmp_path / "t.cache"))
    cfg.validate()
    assert cfg.profiles == (Profile((1, 3, 64, 64), (2, 3, 96, 96), (2, 3, 96, 96)),)
    assert cfg.flags()["workspace_gib"] == 2 and cfg.flags()["strongly_typed"] is True
    with pytest.raises(UsageError, match="unknown engine option"):
        BuildConfig.from_options(fp16=True)
    with pytest.raises(UsageError, match="--opt-level must be 0..5"):
        BuildConfig(opt_level=7).validate()
    with pytest.raises(UsageError, match="--workspace must be a positive"):
        BuildConfig(workspace_gib=0).validate()
    with pytest.raises(UsageError, match="unknown --hardware-compatibility 'turing'"):
        BuildConfig(hardware_compatibility="turing").validate()
    with pytest.raises(UsageError, match="is a directory"):
        BuildConfig(timing_cache=tmp_path).validate()
