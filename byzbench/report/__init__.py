"""``byzbench report``: comparative tables and plots of a results directory.

- :mod:`~byzbench.report.data` — load the database, filter, tidy aggregations (mean ± std
  over seeds, micro-averaged detection);
- :mod:`~byzbench.report.ranking` — "Which defense?": defenses ranked by worst-case
  accuracy with a bootstrap interval over seeds (:mod:`byzbench.worstcase`);
- :mod:`~byzbench.report.tables` — the comparative analysis, accuracy, detection, backdoor
  ASR, privacy-measured and skipped/failed tables; :mod:`~byzbench.report.privacy` —
  privacy facts, stated by each defense and measured per privacy setting;
- :mod:`~byzbench.report.reference` — ``--reference`` claims beside measured values;
- :mod:`~byzbench.report.curves` — ``--curves`` selection and per-round aggregates;
- :mod:`~byzbench.report.plots` — the PNGs (matplotlib, headless);
- :mod:`~byzbench.report.writers` — CSV, markdown, self-contained HTML, rich tables;
- :mod:`~byzbench.report.build` — :func:`build_report` and :func:`write_report`;
- :mod:`~byzbench.report.command` — the typer command.

Nothing heavy is imported here, so registering the command keeps ``byzbench --help`` fast.
"""
