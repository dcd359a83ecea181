"""Generated code for prognos.api.registry (do not edit)."""
