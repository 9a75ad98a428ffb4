"""absl-flag binaries, one per stage (`python -m pipelines.NAME --helpfull`)."""
