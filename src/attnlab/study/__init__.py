"""Studies: fixed grids of training runs that reproduce a paper's comparisons, resumable, with one report each.

* :mod:`attnlab.study.deconstructing`: Xue et al., "Deconstructing Attention" (spec 12), ``attnlab study
  deconstructing``.
"""

from attnlab.study.deconstructing import StudyConfig, StudyResult, get_study_preset, run_study

__all__ = ["StudyConfig", "StudyResult", "get_study_preset", "run_study"]
