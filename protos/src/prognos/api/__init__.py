"""Generated Prognos API (do not edit)."""
