"""Generated code for prognos.api.scheduler (do not edit)."""
