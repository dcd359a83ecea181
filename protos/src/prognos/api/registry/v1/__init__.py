"""Generated code for prognos.api.registry.v1 (do not edit)."""
