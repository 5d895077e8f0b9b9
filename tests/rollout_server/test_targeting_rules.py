"""Targeting rules without a server (rollout_server/targeting.py): versions compare as dotted
numbers, conditions are checked when written, a device that does not report an attribute meets
no condition on it, and the CLI's ``--target`` text reads as the API's conditions."""

from __future__ import annotations

import pytest

from rollout_server.targeting import (
    MAX_ATTRIBUTES,
    TargetError,
    check_attributes,
    expression,
    matches,
    parse_expression,
    parse_target,
    version_key,
)


def target(*texts: str):
    return parse_target([parse_expression(text) for text in texts])


@pytest.mark.parametrize("device, condition, expected", [
    ("4.10", "app_version>=4.9", True),  # numeric, not text: "4.10" < "4.9" as strings
    ("4.9", "app_version>=4.10", False),
    ("4.2", "app_version>=4.2", True),
    ("4.2.0", "app_version>4.2", False),  # trailing zeros are the same version
    ("4.2.0", "app_version==4.2", True),
    ("4.2.1", "app_version>4.2", True),
    ("10", "app_version<9.99", False),
    ("4.1.99", "app_version<4.2", True),
    ("4.2", "app_version<=4.2.0", True),
    ("4.2", "app_version!=4.2.0", False),
    ("4.2-beta", "app_version>=4.0", False),  # not a dotted numeric version: no order, no match
    ("beta", "app_version!=4.2", True),  # != between a non-version and a version: text comparison
])
def test_versions_compare_as_dotted_numbers(device, condition, expected):
    assert matches(target(condition), "rpi4", {"app_version": device}) is expected


def test_version_key_drops_trailing_zeros_and_refuses_text():
    assert version_key("4.10.0") == (4, 10) and version_key("0") == (0,) and version_key("0.0") == (0,)
    assert version_key("v4.2") is None and version_key("4..2") is None and version_key("") is None


def test_lists_strings_and_the_device_class():
    eu_or_us = target("region in eu,us")
    assert matches(eu_or_us, "rpi4", {"region": "eu"}) and not matches(eu_or_us, "rpi4", {"region": "apac"})
    not_free = target("tier not_in free,trial")
    assert matches(not_free, "rpi4", {"tier": "pro"}) and not matches(not_free, "rpi4", {"tier": "free"})
    # device_class is the server's record, whatever a device might claim
    phones = target("device_class==android")
    assert matches(phones, "android", {}) and not matches(phones, "rpi4", {"device_class": "android"})


def test_conditions_are_anded_and_a_missing_attribute_meets_none():
    both = target("app_version>=4.2", "region in eu")
    assert matches(both, "rpi4", {"app_version": "4.3", "region": "eu"})
    assert not matches(both, "rpi4", {"app_version": "4.3", "region": "us"})
    assert not matches(both, "rpi4", {"app_version": "4.1", "region": "eu"})
    for text in ("region!=cn", "region not_in cn", "app_version<9"):  # even the negative ones
        assert not matches(target(text), "rpi4", {}), text
    assert matches((), "rpi4", None)  # no target: every device


@pytest.mark.parametrize("bad, fragment", [
    ("nope", "must be a list"),
    ([{"attribute": "app_version", "op": ">=", "value": "beta"}], "dotted numeric versions"),
    ([{"attribute": "app_version", "op": "~=", "value": "4"}], "'op' must be one of"),
    ([{"attribute": "App", "op": "==", "value": "4"}], "lowercase letter"),
    ([{"attribute": "region", "op": "in", "value": "eu"}], "needs a list"),
    ([{"attribute": "region", "op": "in", "value": []}], "needs a list"),
    ([{"attribute": "region", "op": "==", "value": ["eu"]}], "must be a string"),
    ([{"attribute": "region", "op": "==", "value": "eu", "extra": 1}], "nothing else"),
    ([{"attribute": "region", "op": "==", "value": "x" * 129}], "at most 128"),
    ([{"attribute": "region", "op": "==", "value": "eu"}] * 17, "at most 16"),
])
def test_a_malformed_target_is_refused_with_its_reason(bad, fragment):
    with pytest.raises(TargetError, match=fragment):
        parse_target(bad)


@pytest.mark.parametrize("bad, fragment", [
    ([], "must be an object"),
    ({f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}, "at most 32"),
    ({"Region": "eu"}, "lowercase letter"),
    ({"k" * 65: "v"}, "1 to 64"),
    ({"region": 3}, "must be a string"),
    ({"region": "x" * 129}, "at most 128"),
    ({"region": "eu\n"}, "control characters"),
    ({"device_class": "android"}, "server's record"),
])
def test_malformed_attributes_are_refused(bad, fragment):
    with pytest.raises(TargetError, match=fragment):
        check_attributes(bad)


def test_cli_expressions_read_as_conditions_and_back():
    assert parse_expression("app_version>=4.2") == {"attribute": "app_version", "op": ">=", "value": "4.2"}
    assert parse_expression(" region in eu, us ") == {"attribute": "region", "op": "in",
                                                      "value": ["eu", "us"]}
    assert parse_expression("tier not_in free") == {"attribute": "tier", "op": "not_in", "value": ["free"]}
    for text in ("app_version >= 4.2", "region in eu,us", "os_version<14"):
        assert parse_expression(expression(parse_expression(text))) == parse_expression(text)
    for bad in ("app_version", "app_version=>4.2", "app_version>=beta", "Region==eu"):
        with pytest.raises(TargetError):
            parse_expression(bad)
