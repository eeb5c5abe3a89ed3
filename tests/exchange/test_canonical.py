"""The fast path of ``canonical_json`` writes exactly what RFC 8785 (``rfc8785``) writes."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.canonical import canonical_json

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | _text
    | st.sampled_from(["\u2028", "\x7f", "\x00", '"\\', "\ue000", "\U0001f600", "é"])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            _text | st.sampled_from(["\ue000", "\U0001f600", "a", "\ufb33"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_matches_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"\U0001f600": 1, "\ue000": 2},  # astral vs. high BMP key: UTF-16 order differs
        {"n": 1.5, "z": 1e21, "m": -0.0},  # floats: ES6 number formatting
        [0.1, 100.0],
    ],
)
def test_values_outside_the_fast_path_still_canonical(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def test_integers_beyond_the_safe_range_are_refused_like_rfc8785() -> None:
    with pytest.raises(ValueError, match="safe integer"):
        canonical_json({"big": 2**60})


def test_lone_surrogates_are_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        canonical_json({"a": "\ud800"})
