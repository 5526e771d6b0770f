"""XpService: the activity catalog, the XP ledger and user progress."""
