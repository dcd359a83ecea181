"""Generated code for prognos.api.common (do not edit)."""
