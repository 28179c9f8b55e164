"""S3 → Lambda → PostgreSQL CSV ingestion: contracts, streaming validation, atomic loads, receipts."""

__version__ = "0.1.0"
