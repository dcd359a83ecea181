"""The scheduler branch: the core tables, and a root for the service's own revisions.

Revision ID: scheduler_0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "scheduler_0001"
down_revision = None
branch_labels = ("scheduler",)
depends_on = "core_0001"


def upgrade() -> None:
    """Nothing of the service's own yet: the core tables come from the core branch."""


def downgrade() -> None:
    """Nothing to undo."""
