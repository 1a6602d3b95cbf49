"""Traffic analytics on detection records: tracking, counting lines, zones, rolling aggregates.

`CameraAnalytics` is the per-camera pure core (no Redis); `service` runs it over Redis streams.
Record formats and keys: docs/analytics.md.
"""
