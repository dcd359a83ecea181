"""Prognos core."""
