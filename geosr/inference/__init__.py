"""``downscale``: options and results (:mod:`~geosr.inference.config`), tile geometry and
blending (:mod:`~geosr.inference.tiling`), the tile engine (:mod:`~geosr.inference.engine`)
and the run from inputs to outputs (:mod:`~geosr.inference.run`)."""
