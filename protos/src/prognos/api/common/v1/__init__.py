"""Generated code for prognos.api.common.v1 (do not edit)."""
