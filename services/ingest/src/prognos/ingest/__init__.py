"""Prognos ingest."""
