"""The console's views: one screen class per view (and per drill-down level)."""
