"""Privacy protocols a cell can run: secure aggregation (:mod:`.secagg`) and differential
privacy (:mod:`.dp`). The cell asks for them in its ``privacy:`` block
(:class:`~byzbench.config.PrivacyConfig`)."""
