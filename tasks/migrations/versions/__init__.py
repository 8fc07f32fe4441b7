"""The revisions, applied in order by Alembic (it reads them from their files, not through this package)."""
