"""A trial: one fine-tune of one pruned model, in whichever process a session gives it.

``loop`` (the steps of a run, every rank), ``epoch`` (a pass of SGD, an exact evaluation),
``sessions`` (where the loop runs), ``checkpoint`` (the one format), ``runner`` (one run outside
a sweep, on Ray Train) and ``flags`` (the train/prune command-line flags).
"""
