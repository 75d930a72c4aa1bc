"""The held-apart split: what the recipe trains on and what the benchmark scores never meet."""

from __future__ import annotations

from mica.models import split


def test_training_and_held_sets_are_disjoint(corpus_dir) -> None:
    """No training speech file counts as held apart (the AMI clip is trained on, so
    ``is_held_speech`` says so too), no held file is trained on, and the noises split the
    same way; both sides are non-empty."""
    train = split.training_speech(corpus_dir)
    held = split.held_speech(corpus_dir)
    assert train and held
    assert not {p.name for p in train} & {p.name for p in held}
    assert not [p.name for p in train if split.is_held_speech(p.name)]
    assert all(split.is_held_speech(p.name) for p in held)
    noises_train = {p.name for p in split.training_noises(corpus_dir)}
    noises_held = {p.name for p in split.held_noises(corpus_dir)}
    assert noises_train and noises_held and not noises_train & noises_held
