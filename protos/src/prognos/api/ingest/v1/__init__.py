"""Generated code for prognos.api.ingest.v1 (do not edit)."""
