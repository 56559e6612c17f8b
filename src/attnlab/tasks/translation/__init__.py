"""Encoder-decoder translation: the task, and its metrics (:mod:`attnlab.tasks.translation.metrics`)."""
