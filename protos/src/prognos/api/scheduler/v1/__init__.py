"""Generated code for prognos.api.scheduler.v1 (do not edit)."""
