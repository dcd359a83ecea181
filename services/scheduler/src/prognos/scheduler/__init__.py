"""Prognos scheduler."""
