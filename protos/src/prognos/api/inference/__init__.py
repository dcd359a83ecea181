"""Generated code for prognos.api.inference (do not edit)."""
