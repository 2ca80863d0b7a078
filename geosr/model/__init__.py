"""Trained models: the bundle file format and its hash (:mod:`~geosr.model.bundle`), the
shipped models (:mod:`~geosr.model.registry`) and running a bundle on arrays
(:mod:`~geosr.model.predictor`)."""
