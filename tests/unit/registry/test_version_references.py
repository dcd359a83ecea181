"""Version references: a version id, ``<asset type>@<alias>`` or a bare alias."""

from __future__ import annotations

import pytest

from prognos.registry.domain import Alias, InvalidCommandError
from prognos.registry.handlers import VersionReference, parse_version_reference


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("turbofan-v3", VersionReference(version_id="turbofan-v3")),
        ("champion", VersionReference(alias=Alias.CHAMPION)),
        ("challenger", VersionReference(alias=Alias.CHALLENGER)),
        ("turbofan@champion", VersionReference(asset_type="turbofan", alias=Alias.CHAMPION)),
        ("pump_2@challenger", VersionReference(asset_type="pump_2", alias=Alias.CHALLENGER)),
    ],
)
def test_a_reference_names_a_version_or_an_alias(reference: str, parsed: VersionReference) -> None:
    assert parse_version_reference(reference) == parsed


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("", "required"),
        ("turbofan@chief", "'chief' is not an alias: use champion or challenger"),
        ("@champion", "letters, digits"),
        ("tur bo@champion", "letters, digits"),
        ("x" * 10_000, "at most 200 printable characters"),
        ("bad\nid", "at most 200 printable characters"),
    ],
)
def test_a_malformed_reference_names_the_field_and_the_rule(reference: str, says: str) -> None:
    with pytest.raises(InvalidCommandError) as error:
        parse_version_reference(reference, "to_model_version_id")
    assert error.value.field == "to_model_version_id"
    assert says in error.value.description
    assert len(error.value.description) < 250
