"""Pipeline stages: one module a stage, pure functions plus thin Prefect task wrappers."""
