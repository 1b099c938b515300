"""A FastAPI service a voice platform could start from: ingest, tenant-scoped reads, health, and a
nightly archive job, on callvault (see README.md beside this file)."""
