"""The prognos command line."""
