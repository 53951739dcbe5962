"""How requests become engine jobs and turns: the speaker tag of a simulated turn."""

from __future__ import annotations

from services.inference.modes import split_speaker


def test_a_simulated_turn_names_its_speaker_with_or_without_the_colon():
    names = ["Ann", "Annabel", "Bob"]
    assert split_speaker(" Annabel: hi there", names) == ("Annabel", "hi there")
    assert split_speaker("Bob what's up", names) == ("Bob", "what's up")
    assert split_speaker("Ann", names) == ("Ann", "")
    assert split_speaker("Annie: hello", names) == (None, "Annie: hello")
