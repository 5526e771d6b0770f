"""rewardsctl: catalog as code, player operations and backups."""
