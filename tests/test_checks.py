"""The shared argument checks' messages (pyaudiok/ops/_checks.py)."""
import pytest

from pyaudiok.ops import _checks


def test_one_of_returns_an_allowed_value_and_lists_the_choices_otherwise():
    assert _checks.one_of("mode", "b", ("a", "b")) == "b"
    with pytest.raises(ValueError, match=r"^mode must be 'a' or 'b'; got 'c'$"):
        _checks.one_of("mode", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"^source must be 'auto', 'synthetic' or 'tts'; got 3$"):
        _checks.one_of("source", 3, ("auto", "synthetic", "tts"))
    with pytest.raises(ValueError, match=r"^kind must be 'only'; got None$"):
        _checks.one_of("kind", None, ("only",))
