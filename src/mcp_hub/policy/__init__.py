"""Who may see and call what, and how much of it: ACLs, budgets, rate limits, token counting."""
