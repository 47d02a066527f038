# Hostile/broken lab 0 submission: the controller app dies at import.
raise SystemExit("this controller refuses to start")
