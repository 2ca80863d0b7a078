"""``train``: options (:mod:`~geosr.training.config`), patches read from a prepared dataset
(:mod:`~geosr.training.data`), the loop (:mod:`~geosr.training.loop`) and checkpoints
(:mod:`~geosr.training.checkpoint`)."""
