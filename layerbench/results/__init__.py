"""Results: the typed record (``records``), what identifies a row (``identity``) and the run
directory with its log, sessions, loader and exports (``rundir``)."""
