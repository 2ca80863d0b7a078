"""Prepared datasets: ``prepare`` aligns coarse inputs, fine targets and aux onto one grid
pair and writes a folder described by its manifest."""
