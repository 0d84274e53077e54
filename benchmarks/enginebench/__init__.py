"""The engine benchmark's parts (``benchmarks/engine.py`` is the command): ``config`` (what a
configuration is and how it is written), ``runs`` (one configuration trained in this process),
``spans`` (bubbles, costs and the profile from a pipewave run's measured spans), ``orchestrate``
(each run in a fresh process, the machine's CPU share meanwhile), ``verdicts`` (medians over
rounds, paired ratios, the chunked schedules' analysis, the targets) and ``report`` /
``report_chunked`` (the Markdown report)."""
