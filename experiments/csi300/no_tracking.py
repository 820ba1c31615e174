"""qlib's experiment manager replaced by one without storage (see :mod:`.qlib_data`).

``qlib.init`` always builds an experiment manager; qlib's default is MLflow with an ``mlruns`` folder in the
working directory. This one has no folder and refuses to start an experiment (nothing in this suite starts
one: the suite records its runs itself). It lives in its own module because qlib instantiates it by module
path, and importing it imports qlib's workflow package (MLflow), which a training job never needs.
"""
from qlib.workflow.expm import ExpManager


class NoTracking(ExpManager):
    """An experiment manager that writes nothing."""

    def _start_exp(self, *args, **kwargs):
        raise RuntimeError("experiments.csi300 runs qlib without experiment tracking; nothing may start a "
                           "qlib experiment (the suite records its runs itself)")

    def _end_exp(self, *args, **kwargs):
        return None  # qlib calls this at exit; there is never an experiment to end
