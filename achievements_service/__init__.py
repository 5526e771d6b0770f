"""AchievementsService: the achievement catalog and exactly-once unlocks."""
