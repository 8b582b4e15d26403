"""Policy plugins: rate limits, quotas and budgets."""
