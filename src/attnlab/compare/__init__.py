"""Comparisons: train variants of one config key (mechanisms, cross-attention scores) over seeds under one budget,
then write a leaderboard with honest statistics, plots and an HTML report."""

from attnlab.compare.config import CompareConfig
from attnlab.compare.presets import COMPARE_PRESETS, get_compare_preset
from attnlab.compare.runner import CompareResult, run_compare

__all__ = ["CompareConfig", "CompareResult", "COMPARE_PRESETS", "get_compare_preset", "run_compare"]
