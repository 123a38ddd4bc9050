"""Running a sweep: the runner (``sweep_runner``), where a group runs (``executors``) and the
evaluation of one group (``group``)."""
