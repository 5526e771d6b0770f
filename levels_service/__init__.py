"""LevelsService: the level table and exactly-once level rewards."""
