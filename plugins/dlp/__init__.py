"""The built-in DLP filters."""
