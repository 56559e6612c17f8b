"""Tasks: what is trained on what, behind one interface (:class:`~attnlab.tasks.base.Task`).

Registered tasks (``--task NAME``; imported lazily, so optional dependencies load only when a task is used):

* ``lm``: language modelling (:class:`~attnlab.tasks.lm.LanguageModeling`);
* ``translation``: encoder-decoder translation (:class:`~attnlab.tasks.translation.Translation`);
* ``forecast``: multi-step time-series forecasting (:class:`~attnlab.tasks.forecast.Forecasting`);
* ``digits-vqa``: two-image questions about handwritten digits, trained and evaluated under the future-aware
  masks (:class:`~attnlab.tasks.digits_vqa.DigitsVQA`; needs ``attnlab[digits]``);
* ``stg``: the Spurious Token Game, with CAT's re-attention term, KD and LeaF as objectives
  (:class:`~attnlab.tasks.stg.SpuriousTokenGame`);
* ``arith-distractors``: arithmetic word problems with planted distractors, the same objectives
  (:class:`~attnlab.tasks.arith.ArithmeticDistractors`);
* ``discovery``: one-step forecasting of every variable under prior-knowledge masks, the forecaster of causal
  discovery (:class:`~attnlab.tasks.causal_discovery.DiscoveryForecasting`; driven by :mod:`attnlab.discovery`).
"""

from __future__ import annotations

import importlib

from attnlab.tasks.base import Batch, EvalContext, EvalResult, Loss, Task

__all__ = ["Task", "Batch", "Loss", "EvalResult", "EvalContext", "TASKS", "task_class", "task_names"]

#: task name -> "module:Class"
TASKS: dict[str, str] = {
    "lm": "attnlab.tasks.lm:LanguageModeling",
    "translation": "attnlab.tasks.translation.task:Translation",
    "forecast": "attnlab.tasks.forecast:Forecasting",
    "digits-vqa": "attnlab.tasks.digits_vqa:DigitsVQA",
    "stg": "attnlab.tasks.stg:SpuriousTokenGame",
    "arith-distractors": "attnlab.tasks.arith:ArithmeticDistractors",
    "discovery": "attnlab.tasks.causal_discovery:DiscoveryForecasting",
}


def task_names() -> list[str]:
    return list(TASKS)


def task_class(name: str) -> type[Task]:
    """The task class registered as ``name`` (ValueError listing the tasks otherwise)."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
