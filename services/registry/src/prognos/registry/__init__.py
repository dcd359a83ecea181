"""Prognos registry."""
