"""A sweep: Ray Tune proposes trials (``search_algs``), an executor trains each one where the
space says (``executors``; the worker ``pool`` and its ``dispatcher``), and the ``driver`` runs
it all, from the dense weights to the experiment folder."""
