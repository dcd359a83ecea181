"""Prognos inference."""
