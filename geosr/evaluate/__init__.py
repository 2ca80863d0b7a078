"""``validate``: pure metrics (:mod:`~geosr.evaluate.metrics`), scoring against truth and
baselines (:mod:`~geosr.evaluate.validate`), the report (:mod:`~geosr.evaluate.report`)
and figures (:mod:`~geosr.evaluate.figures`)."""
