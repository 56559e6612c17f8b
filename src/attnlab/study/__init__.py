"""Studies: fixed grids of training runs that reproduce a paper's comparisons, resumable, with one report each.

* :mod:`attnlab.study.deconstructing`: Xue et al., "Deconstructing Attention" (spec 12), ``attnlab study
  deconstructing``; its presets in :mod:`attnlab.study.presets`.
"""

from attnlab.study.deconstructing import StudyConfig, StudyResult, run_study
from attnlab.study.presets import get_study_preset

__all__ = ["StudyConfig", "StudyResult", "get_study_preset", "run_study"]
