"""Generated code for prognos.api.inference.v1 (do not edit)."""
