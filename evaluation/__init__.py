"""The one place quality is measured: scenarios, metrics, peer adapters and the report."""
