"""The stages a user runs, in flow order: export, quantize (calibdata, smoothquant, fallback), tune, build."""
