"""Generated code for prognos.api.ingest (do not edit)."""
