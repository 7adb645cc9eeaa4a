"""Watching the deployed model: per-merchant drift of its answers (``python -m tagger.monitor drift``)."""
