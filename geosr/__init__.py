"""geosr: deep-learning downscaling of coarse geospatial rasters onto a fine grid."""

__version__ = "0.1.0"
