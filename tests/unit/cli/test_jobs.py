"""Command-line params: key=value strings and key:=json values."""

from __future__ import annotations

import pytest
import typer

from service.cli.jobs import parse_params


def test_strings_and_json_values() -> None:
    assert parse_params(["x=6", "name=a=b", "items:=[1, 2]", "flag:=true", "empty="]) == {
        "x": "6",
        "name": "a=b",
        "items": [1, 2],
        "flag": True,
        "empty": "",
    }
    assert parse_params(["url=http://h/?q:=1"]) == {"url": "http://h/?q:=1"}  # `=` comes first: a string


@pytest.mark.parametrize("bad", ["novalue", "=1", "x:=[1"])
def test_bad_pairs_are_named(bad: str) -> None:
    with pytest.raises(typer.BadParameter, match=r"x|novalue|=1"):
        parse_params([bad])
