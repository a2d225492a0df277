"""What a sweep leaves: ``collect`` (Tune's experiment -> the trials table, sweep.json),
``pareto`` (fronts, hypervolume, knee), ``reports`` (trials.csv, pareto.csv, report.md/html,
the plots)."""
